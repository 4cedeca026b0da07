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
