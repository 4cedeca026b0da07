from medsearch.vocab import LOBES, size_bin, site_within


def test_site_hierarchy():
    assert site_within("right lower lobe", "right lung")
    assert site_within("lingula", "left lung")
    assert not site_within("right lower lobe", "left lung")
    assert all(site_within(lobe, lobe) for lobe in LOBES)


def test_size_bins():
    assert [size_bin(x) for x in (3, 6, 9.9, 15, 25, 60)] == [0, 1, 1, 2, 3, 4]
