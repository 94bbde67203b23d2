"""The lab around the method: where runs live and how they are recorded (runs), what each notebook trains
(experiments), the campaign that trains them side by side, the notebooks' helpers (suite), `make reproduce`,
provenance, step timing and the command line. The core (model, mixing, losses, data, train, evaluate)
never imports from here.
"""
