"""Object masks, the image variants and the maps that look at no model, on images whose answer is known."""
import pytest
import torch

from mixedae_core.objects import (attention_region, clutter_regions, cluttered, cluttered_test, foreground_patches, iou,
                                  map_baseline_scores, map_object_iou, mass_shares, object_variants, patch_mask,
                                  prior_maps, translated)


def centred_objects(n=400, size=32, seed=0):
    """Filled rectangles of random size around the image centre, as Fashion-MNIST's objects are centred."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    for i in range(n):
        h, w = torch.randint(8, 17, (2,), generator=g).tolist()
        top, left = (size - h) // 2, (size - w) // 2
        images[i, 0, top:top + h, left:left + w] = 200
    return images


def iou_of(name, images, objects=None, patch_size=4):
    objects = foreground_patches(images, patch_size) if objects is None else objects
    return map_object_iou(prior_maps(images, objects, patch_size)[name], objects).mean().item()


def test_attention_region_holds_the_asked_mass():
    attn = torch.tensor([[[0.5, 0.3], [0.2, 0.0]]])
    assert attention_region(attn, 0.6).tolist() == [[[True, True], [False, False]]]
    assert attention_region(attn, 0.4).tolist() == [[[True, False], [False, False]]]
    assert attention_region(attn, 0.95).tolist() == [[[True, True], [True, False]]]
    # a [CLS] that attends to itself alone leaves no mass on the patches: an empty region, not an error
    both = attention_region(torch.stack([torch.zeros(2, 2), attn[0]]), 0.6)
    assert both.tolist() == [[[False, False], [False, False]], [[True, True], [False, False]]]


def test_attention_equal_to_the_mask_gives_iou_1():
    mask = torch.zeros(3, 8, 8, dtype=torch.bool)
    mask[0, 2:5, 3:6] = True
    mask[1, :, :4] = True
    mask[2, 7, 7] = True
    attn = mask.float() / mask.flatten(1).sum(1).view(-1, 1, 1)  # uniform on the object
    torch.testing.assert_close(iou(attention_region(attn, 0.6), mask), torch.ones(3))
    assert (iou(attention_region(attn, 0.6), ~mask) == 0).all()
    assert iou(mask, mask[[1, 2, 0]]).lt(1).all()


def test_foreground_patches_from_pixels():
    img = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    img[0, 0, :4, :4] = 200          # patch (0, 0) fully on
    img[0, 0, 4, 4] = 10             # patch (1, 1): 1 of 16 pixels
    assert foreground_patches(img, 4).tolist() == [[[True, False], [False, False]]]


def test_a_centre_prior_wins_on_centred_objects_and_not_once_they_move():
    centred = centred_objects()
    moved = translated(centred, 48, torch.Generator().manual_seed(1))
    assert iou_of("oracle", centred) == 1 and iou_of("oracle", moved) == 1
    assert iou_of("centre prior", centred) > 2 * iou_of("uniform", centred)  # the bias the variant removes
    assert iou_of("centre prior", moved) <= iou_of("uniform", moved) + 0.02
    assert moved.shape == (400, 1, 48, 48) and torch.equal(moved.flatten(1).sum(1), centred.flatten(1).sum(1))


def test_on_a_black_background_brightness_alone_finds_the_object():
    """Why a [CLS]-map IoU on Fashion-MNIST as it comes cannot show object awareness: the intensity map needs no
    model."""
    moved = translated(centred_objects(), 48, torch.Generator().manual_seed(1))
    # uniform objects on black: the brightest patches holding 60 % of the brightness are most of the object
    assert iou_of("intensity", moved) > 0.8 > 5 * iou_of("uniform", moved)
    assert iou_of("uniform", moved) < iou_of("local contrast", moved) < iou_of("intensity", moved)  # edges only


def varied_objects(n=64, size=32):
    """Image i: a centred filled rectangle of value 10 + 3 i, so every pixel tells which image it came from."""
    images = centred_objects(n, size)
    return torch.where(images > 0, (10 + 3 * torch.arange(n, dtype=torch.uint8)).view(n, 1, 1, 1), images)


def test_cluttered_objects_have_exact_masks_and_foreign_fragments():
    images = varied_objects()
    out, masks = cluttered(images, torch.Generator().manual_seed(0))
    again, masks_again = cluttered(images, torch.Generator().manual_seed(0))
    assert torch.equal(out, again) and torch.equal(masks, masks_again)  # deterministic from the seed
    assert out.shape == images.shape and masks.shape == (64, 32, 32)
    own = (10 + 3 * torch.arange(64)).view(64, 1, 1)
    under, expected = out[:, 0][masks].long(), own.expand_as(masks)[masks]
    assert ((under > 0) & (under <= expected)).all()  # under the mask: the object (its rim blended by shrinking)
    assert (under == expected).float().mean() > 0.5
    outside = out[:, 0].long().masked_fill(masks, 0)
    assert (outside != own).all()  # outside: background or fragments of other images, never the object's own
    assert (outside > 0).flatten(1).any(1).all()  # every image has clutter
    # shrunk to 20 px of 32: (5/8)^2 = 0.39 of its area, plus the rim pixels it partly covers
    share = masks.flatten(1).sum(1).float() / (images[:, 0] > 0).flatten(1).sum(1)
    assert ((share > 0.3) & (share < 0.7)).all()
    assert not torch.equal(cluttered(images, torch.Generator().manual_seed(1))[1], masks)


def test_clutter_takes_the_answer_away_from_brightness():
    images = centred_objects(200)
    moved = translated(images, 48, torch.Generator().manual_seed(1))
    clutter, masks = object_variants(images, 4)["cluttered"]
    assert iou_of("oracle", clutter, masks) == 1
    assert iou_of("intensity", clutter, masks) < iou_of("intensity", moved) - 0.2
    # a map that knows where objects are in general, not in this image, stays well below the oracle
    assert iou_of("another image's object", clutter, masks) < 0.6


def test_clutter_regions_partition_the_image_and_mass_shares_follow_the_map():
    images, object_pixels = cluttered_test(centred_objects(50))
    regions = clutter_regions(images, object_pixels)
    assert torch.equal(sum(m.int() for m in regions.values()), torch.ones(50, 32, 32, dtype=torch.int))
    assert regions["fragments"].flatten(1).any(1).all() and regions["object"].flatten(1).any(1).all()
    # a uniform map puts on each region its share of the pixels
    uniform = mass_shares(torch.ones(50, 8, 8), regions)
    for name, mask in regions.items():
        torch.testing.assert_close(uniform[name], mask.float().flatten(1).mean(1))
    # a map on one patch whose 16 pixels are all the object's puts all its mass on the object
    full = patch_mask(object_pixels, 4, threshold=0.999)
    b = int(full.flatten(1).any(1).nonzero()[0])
    one_patch = torch.zeros(64).index_fill(0, full[b].flatten().nonzero()[0], 1.0).view(1, 8, 8)
    shares = mass_shares(one_patch, {name: mask[b:b + 1] for name, mask in regions.items()})
    assert shares["object"].item() == pytest.approx(1) and shares["fragments"].item() == 0
    # the oracle map prefers the object; the intensity map prefers the lit pixels, the object's and the fragments'
    maps = prior_maps(images, patch_mask(object_pixels, 4), 4)
    oracle, intensity = mass_shares(maps["oracle"], regions), mass_shares(maps["intensity"], regions)
    area = {name: mask.float().flatten(1).mean(1) for name, mask in regions.items()}
    assert (oracle["object"] > 2 * area["object"]).all()
    assert intensity["fragments"].mean() > 1.5 * area["fragments"].mean()
    assert intensity["blank"].mean() < 0.5 * area["blank"].mean()
    # a transposed map is not the map: the object's share moves
    assert not torch.allclose(mass_shares(maps["oracle"].transpose(1, 2), regions)["object"], oracle["object"])
    # a map with no mass on any patch has no share anywhere
    assert all((share == 0).all() for share in mass_shares(torch.zeros(50, 8, 8), regions).values())


def test_map_baselines_are_scored_as_a_model_is():
    scores = map_baseline_scores(centred_objects(n=40), 4)
    assert {"uniform map", "centre prior map", "intensity map", "local contrast map", "oracle map"} <= set(scores)
    assert set(scores["uniform map"]) == {"object_iou", "object_iou_translated", "object_iou_cluttered"}
    assert scores["intensity map"]["object_iou_translated"] > 0.8 > 5 * scores["uniform map"]["object_iou_translated"]
    assert all(s["object_iou_cluttered"] == 1 for name, s in scores.items() if name == "oracle map")


def test_cluttered_refuses_what_it_cannot_build():
    with pytest.raises(ValueError, match="object_size"):
        cluttered(centred_objects(4, size=8), torch.Generator(), object_size=12)
    with pytest.raises(ValueError, match="at least 2"):
        cluttered(centred_objects(1), torch.Generator())
