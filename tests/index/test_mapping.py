import datetime as dt

import numpy as np

from medsearch.index.mapping import series_refs, vector_ids_where
from medsearch.store.models import Patient, Study


def test_vector_ids_map_to_series_and_studies(instance, populate_instance):
    pats = populate_instance(instance, n_patients=2, series_per_study=2)
    first, second = list(pats)
    ids = pats[first]["vector_ids"] + [10**6, -1]  # unknown and padding ids are dropped
    refs = series_refs(instance, ids)
    assert set(refs) == set(pats[first]["vector_ids"])
    ref = refs[pats[first]["vector_ids"][1]]
    assert ref.series == pats[first]["series"][1] and ref.study == pats[first]["studies"][0]
    assert ref.patient == first and ref.modality == "CT" and ref.body_part == "CHEST"
    assert ref.study_date == dt.date(2020, 1, 1)


def test_filters_become_allowed_id_sets(instance, populate_instance):
    pats = populate_instance(instance, n_patients=3)
    everyone = vector_ids_where(instance)
    assert len(everyone) == 6 and np.all(np.diff(everyone) > 0)
    later = vector_ids_where(instance, Study.study_date >= dt.date(2020, 1, 2))
    assert set(later.tolist()) == {i for p in list(pats)[1:] for i in pats[p]["vector_ids"]}
    restricted = list(pats)[0]
    policy = vector_ids_where(instance, Patient.pseudonym.not_in([restricted]))
    assert not set(policy.tolist()) & set(pats[restricted]["vector_ids"])


def test_unencoded_volumes_are_not_allowed(instance, populate_instance):
    populate_instance(instance, n_patients=1, encode=False)
    assert len(vector_ids_where(instance)) == 0
