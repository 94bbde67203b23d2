"""Where the objects are: object masks, the image variants on which attention maps are scored, and the maps
that look at no model (docs/METHOD.md, "Object awareness").

A map is scored by the IoU between the patches that hold `mass` of it and the object's patches. Three variants
of the test images: `centred` (as the data comes), `translated` (on a larger blank canvas at uniformly random
positions: a centre prior gains nothing) and `cluttered` (shrunk, at a random position, over fragments of other
images, with an exact object mask: brightness no longer marks the object).
"""
import torch
import torch.nn.functional as F

# Datasets whose foreground is "pixel > 0" (Fashion-MNIST's background is exactly 0). On natural images
# nearly every pixel is > 0, so no object IoU is reported for them. The generated test images count too,
# only so that the smoke preset exercises the code: their numbers mean nothing.
OBJECT_MASK_DATASETS = ("fashion-mnist", "synthetic")
# The maps of `prior_maps` that a model must beat: they look at no model, or (another image's object) know where
# objects are in general but not in this image. The oracle is the measure's ceiling, not a baseline.
TRIVIAL_MAPS = ("uniform", "centre prior", "intensity", "local contrast", "another image's object")
VARIANTS = ("centred", "translated", "cluttered")


def patch_mask(pixel_mask: torch.Tensor, patch_size: int, threshold: float = 0.5) -> torch.Tensor:
    """A patch belongs to the object when more than `threshold` of its pixels do. [B, H, W] -> bool [B, grid, grid]."""
    return F.avg_pool2d(pixel_mask.float().unsqueeze(1), patch_size).squeeze(1) > threshold


def foreground(images_uint8: torch.Tensor) -> torch.Tensor:
    """Pixel mask of a black-background image's object: any channel non-zero. [B, C, H, W] -> bool [B, H, W]."""
    return (images_uint8 > 0).any(1)


def foreground_patches(images_uint8: torch.Tensor, patch_size: int, threshold: float = 0.5) -> torch.Tensor:
    """Object mask at patch resolution of black-background images. [B, C, H, W] -> bool [B, grid, grid]."""
    return patch_mask(foreground(images_uint8), patch_size, threshold)


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-item intersection over union of bool masks [B, ...] -> [B]."""
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


def attention_region(attn: torch.Tensor, mass: float = 0.6) -> torch.Tensor:
    """The patches that hold `mass` of each map's attention (DINO's masks): those at least as attended
    as the patch at which the mass, summed from the top, reaches `mass`. Ties at that value are all
    kept, so a map that is uniform on an object selects exactly the object. A map with no mass on any
    patch ([CLS] attending to itself alone, to float precision) has an empty region.
    attn [B, grid, grid] (non-negative) -> bool [B, grid, grid]."""
    flat = attn.flatten(1)
    total = flat.sum(1, keepdim=True)
    flat = flat / total.clamp(min=torch.finfo(flat.dtype).tiny)
    values, _ = flat.sort(dim=1, descending=True)
    before = values.cumsum(1) - values  # mass of the patches ranked above each one
    last = ((before < mass).sum(1, keepdim=True) - 1).clamp(min=0)  # rank of the patch that reaches the mass
    threshold = values.gather(1, last)
    return ((flat >= threshold) & (total > 0)).view_as(attn)


def map_object_iou(maps: torch.Tensor, objects: torch.Tensor, mass: float = 0.6) -> torch.Tensor:
    """Per-image IoU between the region holding `mass` of each map [B, grid, grid] and the object patches."""
    return iou(attention_region(maps, mass), objects.to(maps.device))


def prior_maps(images_uint8: torch.Tensor, objects: torch.Tensor, patch_size: int) -> dict[str, torch.Tensor]:
    """Maps that look at no model, to hold object IoUs against [B, grid, grid]: `uniform` (every patch alike),
    `centre prior` (a Gaussian at the image centre, sigma a quarter of the side: what centred objects reward),
    `intensity` (each patch's mean pixel value: on a black background, brightness alone finds the object),
    `local contrast` (each patch's pixel standard deviation: edges), `oracle` (the object patches themselves:
    IoU 1 by construction) and `another image's object` (the next image's object patches: what a map that
    knows where objects usually are, but not this one, scores)."""
    B, grid = len(images_uint8), images_uint8.shape[-1] // patch_size
    axis = torch.arange(grid, dtype=torch.float32) - (grid - 1) / 2
    centre = torch.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / (2 * (grid / 4) ** 2))
    patches = F.unfold(images_uint8.float().cpu(), patch_size, stride=patch_size)  # [B, C p p, grid^2]
    objects = objects.float().cpu()
    return {"uniform": torch.ones(B, grid, grid), "centre prior": centre.expand(B, grid, grid),
            "intensity": patches.mean(1).view(B, grid, grid), "local contrast": patches.std(1).view(B, grid, grid),
            "oracle": objects, "another image's object": objects.roll(1, dims=0)}


def translated(images_uint8: torch.Tensor, canvas: int, generator: torch.Generator) -> torch.Tensor:
    """Each image on a blank canvas x canvas at a uniformly random position, wrapping around the borders (an
    object cut by one border continues at the opposite one): every canvas position is covered equally often,
    so a centre prior gains nothing (without the wrap, pasted objects still cluster around the centre)."""
    B, C, H, W = images_uint8.shape
    if canvas < max(H, W):
        raise ValueError(f"canvas {canvas} is smaller than the images ({H} x {W})")
    out = torch.zeros(B, C, canvas, canvas, dtype=images_uint8.dtype, device=images_uint8.device)
    out[:, :, :H, :W] = images_uint8
    shifts = torch.randint(0, canvas, (B, 2), generator=generator).tolist()
    return torch.stack([torch.roll(out[b], tuple(shifts[b]), dims=(1, 2)) for b in range(B)])


def cluttered(images_uint8: torch.Tensor, generator: torch.Generator, object_size: int | None = None,
              fragments: int = 6, fragment_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each black-background image shrunk to object_size x object_size (None: 5/8 of its side, 20 px of 32) and
    drawn, its object pixels only, at a random position of a blank canvas of the images' size, over `fragments`
    fragment_size-square crops (None: 3/16 of the side, 6 px of 32) of other images of the batch, cut from their
    central region (where garments have content) and pasted at random positions.

    Returns (images [B, C, H, W] uint8, object pixel masks [B, H, W] bool): the mask is exact, the pixels the
    object was drawn on. Fragments are as bright and as textured as objects, so brightness and edges mark them
    too; they are cut from whole objects, so no fragment is an object itself."""
    B, C, H, W = images_uint8.shape
    object_size = object_size or round(H * 5 / 8)
    fragment_size = fragment_size or round(H * 3 / 16)
    if not fragment_size <= object_size <= min(H, W):
        raise ValueError(f"need fragment_size {fragment_size} <= object_size {object_size} <= image side {min(H, W)}")
    if B < 2 and fragments:
        raise ValueError("fragments are cut from other images: need at least 2 images")
    out = torch.zeros_like(images_uint8)

    def at(limit, n):
        return torch.randint(0, limit + 1, (n,), generator=generator).tolist()

    lo, hi = (H - fragment_size) // 4, (3 * (H - fragment_size)) // 4  # crops from the central half
    for f in range(fragments):
        donors = (torch.arange(B) + 1 + torch.randint(0, B - 1, (B,), generator=generator)) % B  # never itself
        ys, xs = [lo + v for v in at(hi - lo, B)], [lo + v for v in at(hi - lo, B)]
        ty, tx = at(H - fragment_size, B), at(W - fragment_size, B)
        for b in range(B):
            crop = images_uint8[donors[b], :, ys[b]:ys[b] + fragment_size, xs[b]:xs[b] + fragment_size]
            out[b, :, ty[b]:ty[b] + fragment_size, tx[b]:tx[b] + fragment_size] = crop
    small = F.interpolate(images_uint8.float(), size=(object_size, object_size), mode="area").round().to(torch.uint8)
    drawn = foreground(small)
    masks = torch.zeros(B, H, W, dtype=torch.bool, device=images_uint8.device)
    oy, ox = at(H - object_size, B), at(W - object_size, B)
    for b in range(B):
        window = out[b, :, oy[b]:oy[b] + object_size, ox[b]:ox[b] + object_size]
        window[:, drawn[b]] = small[b][:, drawn[b]]
        masks[b, oy[b]:oy[b] + object_size, ox[b]:ox[b] + object_size] = drawn[b]
    return out, masks


def cluttered_test(images_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, object pixel masks): the `cluttered` variant of test images, with the clutter every run is scored on."""
    return cluttered(images_uint8, torch.Generator().manual_seed(5))


def clutter_regions(images_uint8: torch.Tensor, object_pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Pixel masks [B, H, W] that partition cluttered images: the `object`, the `fragments` (every other non-zero
    pixel) and the `blank` canvas."""
    lit = foreground(images_uint8)
    return {"object": object_pixels, "fragments": lit & ~object_pixels, "blank": ~lit}


def mass_shares(maps: torch.Tensor, regions: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{region: per-image share of each map's mass on its pixels}: maps [B, grid, grid] (non-negative), regions
    pixel masks [B, H, W]; a patch's mass is spread evenly over its pixels. A uniform map's share is the region's
    share of the image; a map with no mass on any patch has no share anywhere."""
    flat = maps.float().flatten(1)
    mass = (flat / flat.sum(1, keepdim=True).clamp(min=torch.finfo(flat.dtype).tiny)).view_as(maps)
    side = next(iter(regions.values())).shape[-1]
    patch_pixels = (side // maps.shape[-1]) ** 2
    per_pixel = F.interpolate(mass.unsqueeze(1), size=(side, side), mode="nearest").squeeze(1) / patch_pixels
    return {name: (per_pixel * mask.to(per_pixel.device)).flatten(1).sum(1) for name, mask in regions.items()}


def object_variants(images_uint8: torch.Tensor, patch_size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{variant: (images, object patches)} of the test images, the same for every run: `centred` as they come;
    `translated` on a canvas 1.5 x their side (rounded up to an even number of patches, so that the grid splits
    among G = 2 or 4 images); `cluttered` at their own size (`cluttered_test`)."""
    side, step = images_uint8.shape[-1], 2 * patch_size
    canvas = -(-(side * 3 // 2) // step) * step
    moved = translated(images_uint8, canvas, torch.Generator().manual_seed(4))
    clutter, masks = cluttered_test(images_uint8)
    return {"centred": (images_uint8, foreground_patches(images_uint8, patch_size)),
            "translated": (moved, foreground_patches(moved, patch_size)),
            "cluttered": (clutter, patch_mask(masks, patch_size))}


def has_object_masks(dataset: str) -> bool:
    """Whether the images of `dataset` (a Config's) come with object masks to score attention maps against."""
    return dataset.split(":", 1)[0] in OBJECT_MASK_DATASETS


def drawn_variant(images_uint8: torch.Tensor, patch_size: int, dataset: str) -> tuple[str, torch.Tensor, dict]:
    """(caption, images, reference maps) of the images attention maps are drawn on: the `cluttered` variant beside
    its exact object mask and its intensity map (what brightness alone finds) where `dataset` has object masks;
    else the images as they come, with no reference map."""
    if not has_object_masks(dataset):
        return "test images (no object masks in this data)", images_uint8, {}
    images, objects = object_variants(images_uint8, patch_size)["cluttered"]
    return "cluttered test images", images, {"object (exact mask)": objects.float(),
                                             "intensity": prior_maps(images, objects, patch_size)["intensity"]}


def score_name(variant: str) -> str:
    """The record's score of a variant: object_iou, object_iou_translated, object_iou_cluttered."""
    return "object_iou" if variant == "centred" else f"object_iou_{variant}"


def map_baseline_scores(test_images_uint8: torch.Tensor, patch_size: int, mass: float = 0.6) -> dict:
    """{'<name> map': {score_name(variant): IoU}} of every map of `prior_maps` on every variant of
    `object_variants`, as a model's object IoUs are taken."""
    out = {}
    for variant, (images, objects) in object_variants(test_images_uint8.cpu(), patch_size).items():
        for name, maps in prior_maps(images, objects, patch_size).items():
            out.setdefault(f"{name} map", {})[score_name(variant)] = map_object_iou(maps, objects, mass).mean().item()
    return out
