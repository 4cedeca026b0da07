from medsearch.doctor import CHECKS, Check, check_terminology
from medsearch.query.health import doctor_check
from medsearch.settings import load_settings


class _Inst:
    def __init__(self, **settings):
        self.settings = load_settings(env={}, overrides=settings)


def test_doctor_check_reports_the_terminology():
    c = doctor_check(_Inst(), Check)
    assert c.status == "ok" and "concepts" in c.detail


def test_doctor_check_fails_with_the_fix(tmp_path):
    c = doctor_check(_Inst(terminology_dir=str(tmp_path / "missing")), Check)
    assert c.status == "fail" and "terminology_dir" in c.fix


def test_doctor_runs_the_terminology_check():
    assert check_terminology in CHECKS
    assert check_terminology(_Inst()).name == "terminology"
