"""Token-level image mixing (docs/METHOD.md, "Mixing"): groups of G images share one sequence of N positions.

Everything here runs on the device, on patch tokens after the patch/position embedding.
"""
import torch


def draw_partition(num_groups: int, num_patches: int, group_size: int, noise: torch.Tensor | None = None,
                   device=None) -> torch.Tensor:
    """Uniformly random partition of the N positions of each group into G sets of N/G positions.

    Returns `sets` [num_groups, N]: the set index (0..G-1) of every position. `noise` (uniform,
    [num_groups, N]) replaces the internal draw, as MAE's masking noise does.
    """
    if noise is None:
        noise = torch.rand(num_groups, num_patches, device=device)
    elif noise.shape != (num_groups, num_patches):
        raise ValueError(f"mixing noise must have shape {(num_groups, num_patches)} "
                         f"(groups, patches), got {tuple(noise.shape)}")
    perm = noise.argsort(dim=1)  # a random permutation, cut into G consecutive chunks
    set_of_rank = torch.arange(num_patches, device=noise.device) // (num_patches // group_size)
    return torch.empty_like(perm).scatter_(1, perm, set_of_rank.expand_as(perm))


def mix_tokens(tokens: torch.Tensor, sets: torch.Tensor, mode: str):
    """Fill mixed sequences with the tokens of a batch laid out as consecutive groups of G images.

    tokens [B, N, D]; sets [B/G, N] from `draw_partition`.
    - compose: one sequence per group; image g of the group fills set g.
    - full: G sequences per group; in sequence j image g fills set (g + j) mod G, so every patch of every
      image is visible exactly once across the group. Sequence j belongs to (is decoded for) image j.
    Returns (mixed [E, N, D], src [E, N] = slot of the source image of every position,
    seq_of_image [B] = the sequence that reconstructs each image of the batch).
    """
    B, N, _ = tokens.shape
    num_groups = sets.shape[0]
    G = B // num_groups
    device = tokens.device
    if mode == "compose":
        src = sets
        group_of_seq = torch.arange(num_groups, device=device)
        seq_of_image = torch.arange(B, device=device) // G
    elif mode == "full":
        shifts = torch.arange(G, device=device).view(1, G, 1)
        src = ((sets.unsqueeze(1) - shifts) % G).reshape(B, N)  # in sequence j, set s holds image (s - j) mod G
        group_of_seq = torch.arange(B, device=device) // G
        seq_of_image = torch.arange(B, device=device)
    else:
        raise ValueError(f"mix_mode must be 'compose' or 'full', got {mode!r}")
    image_of_position = group_of_seq.unsqueeze(1) * G + src
    mixed = tokens[image_of_position, torch.arange(N, device=device)]
    return mixed, src, seq_of_image
