"""What a config's switches mean for the model, in one place: `resolve` turns a `ModelConfig` into the plainly
named `Switches` the model is built from (K, the [CLS] tokens, where segment embeddings go, the loss form, the
homologous layers); `canonical` makes two configs that build the same model equal, which is what a run's
identity needs. config.py validates the values; nothing else interprets them.
"""
import dataclasses
import math
from dataclasses import dataclass

MIXING_METHODS = ("naive", "mixedae")
GLOBAL = "global"  # topk: every patch query reads every key it may read (no homologous selection)
# The switches that change MixedAE only; every other method holds them at their defaults (config.py checks it).
LOSS_SWITCHES = ("hc_form", "hc_weight", "hc_temperature", "hc_proj_dim")
MIXEDAE_SWITCHES = ("topk", "homologous_layers", "seg_embed", *LOSS_SWITCHES)


@dataclass(frozen=True)
class Switches:
    """A model's switches, resolved. N patches per image, G images per mixing group."""
    mixes: bool                         # naive mixing or MixedAE: sequences hold patches of G images
    group_size: int                     # G (1 for MAE)
    mix_mode: str                       # compose: one sequence per group | full: G sequences per group
    tokens_per_image: int               # rN: the positions one image fills in a mixed sequence (N for MAE)
    per_image_cls: bool                 # each image has its own [CLS], reading that image only, read by no patch
    cls_reads_itself: bool              # ... and that [CLS] query may read its own key
    n_cls: int                          # [CLS] tokens leading every encoded sequence
    patch_keys: int                     # keys a patch query may read: the N patches (+ 1: a shared [CLS])
    K: int | None                       # MixedAE's K as a number of keys (patch_keys: global); None otherwise
    default_K: int | None               # K's default: rN, exactly an image's own patches (+ 1: a shared [CLS])
    kept_keys: int | None               # the K the homologous layers apply; None where nothing is dropped
    homologous_layers: tuple[int, ...]  # encoder blocks with homologous attention (MixedAE only)
    seg_embed: str | None               # where segment embeddings are added: 'encoder' | 'decoder' | None
    loss_form: str | None               # the homologous loss: 'attention' | 'features' | None (none)
    hc_weight: float                    # its weight in the total loss

    def recognition_references(self) -> dict:
        """Where MixedAE's recognition diagnostics sit by chance and when perfect: TopK accuracy at chance,
        and loss_hc at chance (features: identical projections, log(N - 1); attention: uniform logits,
        -log((rN - 1)/(N - 1))) and when perfect (features: log(rN - 1); attention: 0)."""
        N, rN = self.tokens_per_image * self.group_size, self.tokens_per_image
        if self.loss_form == "features":
            chance, perfect = math.log(N - 1), math.log(rN - 1)
        else:
            chance, perfect = -math.log((rN - 1) / (N - 1)), 0.0
        return {"topk_acc_chance": (rN - 1) / (N - 1), "loss_hc_chance": chance, "loss_hc_perfect": perfect}


def mixing_group_size(c) -> int:
    """G = 1/mix_ratio: the images a mixing method puts in one group (MAE is shown the same groups where
    methods are compared on identical positions)."""
    return round(1 / c.mix_ratio) if c.mix_ratio > 0 else 0


def resolve(c) -> Switches:
    """The `Switches` of ModelConfig `c` (its values already validated)."""
    mixes, mixedae, N = c.method in MIXING_METHODS, c.method == "mixedae", c.num_patches
    G = mixing_group_size(c) if mixes else 1
    per_image_cls = mixes and c.cls_per_image
    patch_keys = N + (0 if per_image_cls or not mixes else 1)
    default_K = patch_keys - N + N // G if mixedae else None
    K = {None: default_K, GLOBAL: patch_keys}.get(c.topk, c.topk) if mixedae else None
    if K is not None and not 1 <= K <= patch_keys:
        raise ValueError(f"topk must be in [1, {patch_keys}] (the keys a patch query may read) or {GLOBAL!r}, got {K}")
    layers = (c.homologous_layers if c.homologous_layers is not None else tuple(range(c.depth))) if mixedae else ()
    loss_form = c.hc_form if mixedae and c.hc_weight != 0 and (c.hc_form == "features" or layers) else None
    seg_embed = (c.seg_embed or "encoder") if mixedae else None
    return Switches(mixes=mixes, group_size=G, mix_mode=c.mix_mode, tokens_per_image=N // G,
                    per_image_cls=per_image_cls, cls_reads_itself=c.cls_reads_itself,
                    n_cls=G if per_image_cls and c.mix_mode == "compose" else 1, patch_keys=patch_keys,
                    K=K, default_K=default_K, kept_keys=K if K is not None and K < patch_keys else None,
                    homologous_layers=layers, seg_embed=None if seg_embed == "none" else seg_embed,
                    loss_form=loss_form, hc_weight=c.hc_weight)


def canonical(c):
    """A copy of config `c` in which two configs that build the same model are equal: a MixedAE switch at its
    default back to None (`topk=rN`, `topk=None`: one model; 'global' as its number of keys), the loss's other
    switches at their defaults where there is no homologous loss, `cls_reads_itself` where no [CLS] is per image,
    and `cls_per_image` where nothing is mixed."""
    s, defaults = resolve(c), {f.name: f.default for f in dataclasses.fields(c) if f.name in MIXEDAE_SWITCHES}
    replace = {"seg_embed": None}
    if c.method == "mixedae":
        replace = {"topk": None if s.K == s.default_K else s.K,
                   "homologous_layers": None if s.homologous_layers == tuple(range(c.depth)) else s.homologous_layers,
                   "seg_embed": None if c.seg_embed == "encoder" else c.seg_embed}
    if s.loss_form is None:
        replace |= {name: defaults[name] for name in LOSS_SWITCHES if name != "hc_weight"}
    if not s.per_image_cls:  # a ViT's [CLS], which reads every token: the switch cannot change the model
        replace |= {"cls_reads_itself": True}
    if not s.mixes:  # one image per sequence: its [CLS] is the image's either way
        replace |= {"cls_per_image": True}
    return dataclasses.replace(c, **replace)
