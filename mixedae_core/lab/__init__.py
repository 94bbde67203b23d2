"""The lab around the method: where runs live and how they are recorded (runs), what each notebook trains
(experiments), one notebook's view of its runs, tables and figures (suite), the campaign that trains the
runs side by side, whether a difference is real (claims), what each notebook finds (findings), what a
notebook calls first and last (notebook), `make reproduce`, provenance, step timing and the command line.
The core (model, mixing, losses, data, train, evaluate) never imports from here.
"""
