import pytest

from medsearch.synth.study import generate_study
from medsearch.vocab import FINDING_TYPES

# Every finding type, spread over three studies (pleural findings on different sides per study).
FORCED = [["nodule", "mass", "pleural effusion", "emphysema"],
          ["cavity", "consolidation", "pneumothorax"],
          ["ground-glass opacity", "atelectasis", "nodule"]]


@pytest.fixture(scope="session")
def forced_studies():
    studies = [generate_study(11, i, 128, findings=f) for i, f in enumerate(FORCED)]
    covered = {f["type"] for s in studies for f in s.labels["findings"]}
    assert covered == set(FINDING_TYPES)
    return studies


@pytest.fixture(scope="session")
def archive(tmp_path_factory):
    from medsearch.synth.archive import generate_archive

    out = tmp_path_factory.mktemp("synth") / "arc"
    generate_archive(out, 4, 5, 128, preview=True, workers=2, progress=False)
    return out


@pytest.fixture(scope="module")
def one_study():
    """A study whose acquisition the writer tests vary (transfer syntax, multi-frame)."""
    return generate_study(2, 0, 128)


@pytest.fixture(scope="session")
def plain_studies():
    """Studies as planned (no forced findings), including a follow-up study."""
    from medsearch.synth.plan import visit_plan

    indices = list(range(6))
    follow_up = next(i for i in range(6, 200) if visit_plan(21, i).visit > 0)
    return [generate_study(21, i, 128) for i in indices + [follow_up]]
