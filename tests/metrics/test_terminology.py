"""terminology: word-boundary matching, inflections, per-case terms, YAML/CSV glossaries and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunebench.errors import ConfigError
from tunebench.metrics import MetricContext
from tunebench.metrics import terminology as terminology_module
from tunebench.metrics.terminology import find_term, load_glossary, terminology
from tunebench.records import Case, Output, Sample

REPO = Path(__file__).resolve().parents[2]


def sample(text: str, expected: str = "", vars: dict | None = None) -> Sample:
    case = Case(id="faq-7", input="q", expected=expected, vars=vars or {}, source="golden.jsonl:7")
    return Sample(case, Output(case_id="faq-7", model="m", repeat=0, text=text))


def build(suite_dir: Path | None = None, **options):
    return terminology.__tunebench_metric__.build(options, MetricContext(suite_dir=suite_dir or Path.cwd()))


# -- matching ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("term", "text", "found"),
    [
        ("rent", "The parent pays.", False),
        ("rent", "You pay rent monthly.", True),
        ("rent", "pärent", False),  # ä is a word character: Unicode-aware boundaries
        ("rent", "rent-free", True),
        ("deductible", "Deductibles vary.", True),
        ("deductible", "the deductible's size", True),
        ("deductible", "the deductible’s size", True),  # typographic apostrophe
        ("deductible", "non-deductibility", False),
        ("policy", "two policies", True),
        ("policy", "the policy's terms", True),
        ("policyholder", "the policyholders' rights", True),
        ("tax", "income taxes", True),
        ("tax", "taxation", False),
        ("out-of-pocket maximum", "your out of pocket maximum", True),
        ("out-of-pocket maximum", "your Out-Of-Pocket  Maximums", True),
        ("out-of-pocket maximum", "out\u2011of\u2011pocket\nmaximum", True),  # non-breaking hyphens, newline
        ("out-of-pocket maximum", "out-of-pocket costs", False),
        ("out of pocket maximum", "out-of-pocket maximum", True),
        ("pre-existing condition", "preexisting conditions", True),
        ("health plan", "healthplan", False),  # a space in the term needs a separator
        ("Worker's Compensation", "workers compensation", False),
        ("Worker's Compensation", "WORKER’S COMPENSATION", True),
        ("seguro médico", "SEGURO MÉDICO", True),
        ("seguro médico", "seguro me\u0301dico", False),  # raw decomposed text: the metric NFC-normalises first
        ("año", "añoranza", False),
        ("CHIP", "Medicaid and CHIP", True),
    ],
)
def test_find_term(term, text, found):
    assert bool(find_term(term, text)) is found


def test_metric_normalises_unicode_before_matching():
    metric = build(required=["seguro médico"], only_if_in_expected=False)
    assert metric.score(sample("el seguro me\u0301dico")).value == 1.0


# -- scoring ----------------------------------------------------------------------------------------------------


def test_only_required_terms_in_the_golden_apply():
    metric = build(required=["deductible", "premium", "coinsurance"])
    golden = "You pay the deductible before coinsurance starts."
    score = metric.score(sample("First the deductible, then you pay a share.", golden))
    assert score.details == {
        "required": ["deductible", "coinsurance"],
        "missing": ["coinsurance"],
        "forbidden_used": [],
        "deprecated_used": {},
    }
    assert score.value == 0.5
    assert score.passed is False  # threshold 1.0 by default
    assert score.explanation == "missing: coinsurance"
    everything = build(required=["deductible", "premium", "coinsurance"], only_if_in_expected=False)
    assert everything.score(sample("First the deductible.", golden)).value == pytest.approx(1 / 3)


def test_nothing_applies_is_a_pass():
    score = build(required=["deductible"]).score(sample("Call the Marketplace.", "Call the Marketplace."))
    assert (score.value, score.passed, score.explanation) == (1.0, True, "no required terms apply")


def test_empty_output():
    metric = build(required=["deductible", "premium"])
    score = metric.score(sample("", "The premium and the deductible."))
    assert (score.value, score.passed) == (0.0, False)
    assert score.details["missing"] == ["deductible", "premium"]
    assert metric.score(sample("", "")).value == 1.0


def test_forbidden_and_deprecated_fail_whatever_the_value():
    metric = build(required=["premium"], forbidden=["Obamacare"], preferred={"policyholder": ["customer", "client"]})
    score = metric.score(sample("Customers pay the premium under Obamacare.", "The premium is monthly."))
    assert score.value == 1.0
    assert score.passed is False
    assert score.details["forbidden_used"] == ["Obamacare"]
    assert score.details["deprecated_used"] == {"customer": "policyholder"}
    assert score.explanation == "forbidden: Obamacare; deprecated: customer (use policyholder)"
    json.dumps(score.details)
    clean = metric.score(sample("The policyholder pays the premium.", "The premium is monthly."))
    assert (clean.passed, clean.explanation) == (True, "all 1 required terms present")


def test_explanation_names_missing_and_forbidden_terms():
    metric = build(required=["deductible", "premium"], forbidden=["Obamacare"])
    score = metric.score(sample("Obamacare plans have a deductible.", "Each premium and deductible."))
    assert score.explanation == "missing: premium; forbidden: Obamacare"


def test_deprecated_term_inside_the_preferred_term_does_not_count():
    metric = build(preferred={"premium tax credit": ["tax credit"]})
    assert metric.score(sample("You may get a premium tax credit.")).passed is True
    used = metric.score(sample("You may get a tax credit."))
    assert used.passed is False and used.details["deprecated_used"] == {"tax credit": "premium tax credit"}


def test_threshold():
    metric = build(required=["deductible", "premium"], threshold=0.5)
    assert metric.score(sample("the deductible", "premium and deductible")).passed is True
    no_threshold = build(required=["deductible"], forbidden=["Obamacare"], threshold=None)
    assert no_threshold.score(sample("the deductible", "deductible")).passed is None
    assert no_threshold.score(sample("Obamacare deductible", "deductible")).passed is False


def test_per_case_terms():
    metric = build(required=["premium"])
    vars = {"required_terms": ["open enrollment"], "forbidden_terms": "guaranteed"}
    score = metric.score(sample("Enroll during open enrollment, guaranteed!", "Enroll now.", vars))
    # per-case required terms apply even though the golden text does not contain them
    assert score.details["required"] == ["open enrollment"]
    assert score.details["forbidden_used"] == ["guaranteed"]
    assert score.passed is False
    ignored = build(required=["premium"], use_case_vars=False).score(sample("guaranteed!", "Enroll now.", vars))
    assert (ignored.value, ignored.passed, ignored.details["required"]) == (1.0, True, [])


def test_per_case_terms_of_the_wrong_type_name_the_case():
    with pytest.raises(ConfigError) as err:
        build().score(sample("x", "y", {"required_terms": {"premium": 1}}))
    assert str(err.value).startswith("golden.jsonl:7: case 'faq-7': vars.required_terms must be a list")


# -- glossary files ---------------------------------------------------------------------------------------------


YAML_GLOSSARY = """\
required:
  - deductible
  - out-of-pocket maximum
forbidden: [Obamacare]
preferred:
  policyholder: [customer, client]
  copayment: copay
"""

CSV_GLOSSARY = """\
term,kind,replaces
deductible,required,
out-of-pocket maximum,required,
# a comment line
Obamacare,forbidden,

policyholder,preferred,customer; client
copayment,preferred,copay
"""


def test_yaml_and_csv_glossaries_are_equivalent(tmp_path):
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "terms.yaml").write_text(YAML_GLOSSARY, encoding="utf-8")
    (tmp_path / "g" / "terms.csv").write_text(CSV_GLOSSARY, encoding="utf-8")
    from_yaml = load_glossary(tmp_path / "g" / "terms.yaml")
    assert from_yaml == load_glossary(tmp_path / "g" / "terms.csv")
    assert from_yaml.required == ("deductible", "out-of-pocket maximum")
    assert from_yaml.forbidden == ("Obamacare",)
    assert from_yaml.preferred == {"policyholder": ("customer", "client"), "copayment": ("copay",)}
    # relative to the suite directory; inline options are merged in
    metric = build(tmp_path, glossary="g/terms.csv", required=["premium"])
    score = metric.score(
        sample("Your copay and premium.", "The premium and the out of pocket maximum and the deductible.")
    )
    assert score.details == {
        "required": ["deductible", "out-of-pocket maximum", "premium"],
        "missing": ["deductible", "out-of-pocket maximum"],
        "forbidden_used": [],
        "deprecated_used": {"copay": "copayment"},
    }
    assert score.value == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("name", "content", "line", "fragment"),
    [
        ("g.yaml", "required:\n  - premium\n  - [nested]\n", 3, "each entry must be a term"),
        ("g.yaml", "required: [premium]\nforbiden: [x]\n", 2, "did you mean 'forbidden'"),
        ("g.yaml", "required: [premium\nforbidden: [x]\n", 2, "not valid YAML"),
        ("g.yaml", "required: [premium]\nrequired: [x]\n", 2, "appears twice"),
        ("g.yaml", "preferred:\n  policyholder: []\n", 2, "no deprecated alternatives"),
        ("g.yaml", "preferred: [a, b]\n", 1, "preferred must map"),
        ("g.yaml", "- premium\n", 1, "must be a mapping"),
        ("g.yaml", "required:\n  - premium\n  - '---'\n", 3, "not a term"),
        ("g.csv", "term,kind,replaces\npremium,required,\ncopay,prefered,\n", 3, "did you mean 'preferred'"),
        ("g.csv", "term,kind,replaces\npremium,required,,extra\n", 2, "expected 3 columns"),
        ("g.csv", "term,kind,replaces\n\npolicyholder,preferred,\n", 3, "replaces nothing"),
        ("g.csv", "term,kind,replaces\npremium,required,fee\n", 2, "only for kind 'preferred'"),
        ("g.csv", "word,type\npremium,required\n", 1, "header"),
    ],
)
def test_malformed_glossary_names_file_and_line(tmp_path, name, content, line, fragment):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        build(tmp_path, glossary=name)
    assert err.value.path == str(tmp_path / name)
    assert err.value.line == line
    assert str(err.value).startswith(f"{tmp_path / name}:{line}")
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("missing.yaml", None, "not found"),
        ("g.txt", "premium", "unsupported glossary format"),
        ("g.yaml", "", "empty"),
        ("g.yaml", b"required: [\xff]", "not UTF-8"),
    ],
)
def test_unusable_glossary_files(tmp_path, name, content, fragment):
    if isinstance(content, bytes):
        (tmp_path / name).write_bytes(content)
    elif content is not None:
        (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        build(tmp_path, glossary=name)
    assert str(err.value).startswith(str(tmp_path / name))
    assert fragment in str(err.value)


def test_contradictory_terms_are_rejected():
    with pytest.raises(ConfigError, match="both required and forbidden"):
        build(required=["Out-of-pocket maximum"], forbidden=["out of pocket maximum"])
    with pytest.raises(ConfigError, match="deprecated"):
        build(required=["customer"], preferred={"policyholder": ["customer"]})
    with pytest.raises(ConfigError, match="no terms to check"):
        build(use_case_vars=False)


# -- the shipped insurance glossary ------------------------------------------------------------------------------

# Golden answer of insurance_qa case "Out-of-pocket maximum/limit" (HealthCare.gov, public domain).
OOP_GOLDEN = (
    "The most you pay during a policy period (usually a year) before your health insurance or plan begins to pay "
    "100% of the allowed amount. This limit never includes your premium, balance-billed charges, or health care "
    "your health insurance or plan doesn’t cover. Some health insurance or plans don’t count your copayments, "
    "deductibles, coinsurance payments, out-of-network payments, or other expenses toward this limit. In Medicaid "
    "and CHIP, the limit includes premiums."
)


def test_insurance_glossary():
    metric = build(REPO / "evals", glossary="glossaries/insurance_en.yaml")
    golden = metric.score(sample(OOP_GOLDEN, OOP_GOLDEN))
    assert golden.passed is True
    assert golden.details["required"] == [
        "premium",
        "deductible",
        "coinsurance",
        "copayment",
        "allowed amount",
        "out-of-network",
        "Medicaid",
        "CHIP",
    ]
    answer = "It is the cap on what you pay in a year, not counting the premium; your copay counts toward it."
    score = metric.score(sample(answer, OOP_GOLDEN))
    assert score.passed is False
    assert score.details["deprecated_used"] == {"co-pay": "copayment"}  # "co-pay" also matches "copay"
    assert score.details["missing"] == [
        "deductible",
        "coinsurance",
        "copayment",
        "allowed amount",
        "out-of-network",
        "Medicaid",
        "CHIP",
    ]


def test_plugin_hook_registers_terminology():
    registered = []
    terminology_module.register_metrics(register=registered.append)
    assert [(f.__tunebench_metric__.kind, f.__tunebench_metric__.family) for f in registered] == [
        ("terminology", "terminology")
    ]
