import numpy as np

from hemaseg.core.labels import polygons, split_instances, wbc_objects
from hemaseg.tasks.wbc import clean_wbc_classes


def _discs(centers, r, shape=(100, 160)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    m = np.zeros(shape, bool)
    for cy, cx in centers:
        m |= (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    return m


def test_touching_discs_split_in_two():
    m = _discs([(50, 50), (50, 86)], 20)  # overlap by 4 px
    from scipy.ndimage import label

    assert label(m)[1] == 1
    inst = split_instances(m, diameter=40)
    assert inst.max() == 2
    # Each instance holds one disc centre.
    assert inst[50, 50] != inst[50, 86] and inst[50, 50] > 0 and inst[50, 86] > 0


def test_single_and_separate_discs():
    assert split_instances(_discs([(50, 50)], 20), diameter=40).max() == 1
    assert split_instances(_discs([(30, 30), (70, 120)], 15), diameter=30).max() == 2


def test_polygons_and_objects():
    m = _discs([(50, 50)], 20)
    (poly,) = polygons(m)
    xs, ys = np.array(poly).T
    assert 28 <= xs.min() <= 32 and 68 <= xs.max() <= 72
    classes = m.astype(np.uint8)
    classes[_discs([(50, 50)], 8)] = 2
    objs = wbc_objects(classes, split_instances(m, 40))
    assert len(objs) == 1
    o = objs[0]
    assert o["bounding_box"] == {"x1": 31, "x2": 70, "y1": 31, "y2": 70}
    assert o["nucleus_area"] == int(_discs([(50, 50)], 8).sum())
    assert len(o["nucleus_vertices"]) == 1 and not o["touches_border"]


def test_clean_removes_specks_fills_holes():
    c = np.zeros((50, 50), np.uint8)
    c[10:30, 10:30] = 1
    c[15:18, 15:18] = 0
    c[45, 45] = 1
    out = clean_wbc_classes(c, min_area=20)
    assert out[16, 16] == 1 and out[45, 45] == 0


def test_big_touching_cells_split_on_a_smaller_copy():
    m = _discs([(100, 100), (100, 210)], 60, shape=(200, 320))
    inst = split_instances(m, diameter=120)  # > 2 x SPLIT_DIAMETER: the downsampled path
    assert inst.max() == 2 and inst[100, 100] != inst[100, 210]
    assert np.array_equal(inst > 0, m)  # every mask pixel labelled, nothing outside


def test_cytoplasm_is_limited_to_one_nucleus_diameter():
    from hemaseg.tasks.wbc import limit_cytoplasm

    classes = np.zeros((60, 200), np.uint8)
    classes[10:50, 10:190] = 1  # a cell smeared over its neighbours
    classes[25:35, 25:35] = 2  # nucleus, equivalent diameter ~11.3 px
    inst = (classes > 0).astype(np.int32)
    c, i = limit_cytoplasm(classes, inst, max_reach=1.0)
    assert c[30, 40] == 1 and i[30, 40] == 1  # 5 px from the nucleus: kept
    assert c[30, 100] == 0 and i[30, 100] == 0  # 65 px away: cut
    assert (c == 2).sum() == 100  # the nucleus itself is untouched
