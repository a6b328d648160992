"""The declared-size rule of enrolment: the device declares, its token caps, the registry limits."""

from __future__ import annotations

import pytest

from qflare.reasons import Reason
from services.registry.labels import DeclaredExamplesRejected, admitted_labels

LIMIT = 1_000_000


def _refused(device: dict[str, str], token: dict[str, str], limit: int = LIMIT) -> DeclaredExamplesRejected:
    with pytest.raises(DeclaredExamplesRejected) as caught:
        admitted_labels(device, token, limit=limit)
    assert caught.value.reason == Reason.DECLARED_EXAMPLES
    return caught.value


def test_a_declaration_within_the_tokens_max_is_kept() -> None:
    labels = admitted_labels(
        {"qflare.num_examples": "540", "site": "a"}, {"qflare.max_examples": "600"}, limit=LIMIT
    )
    assert labels == {"qflare.num_examples": "540", "site": "a", "qflare.max_examples": "600"}
    assert (
        admitted_labels({"qflare.num_examples": "0600"}, {"qflare.max_examples": "600"}, limit=LIMIT)[
            "qflare.num_examples"
        ]
        == "600"
    )  # normalised
    assert admitted_labels({"site": "a"}, {"qflare.max_examples": "600"}, limit=LIMIT)["site"] == "a"


def test_over_the_tokens_max_or_the_registry_limit_or_malformed_is_refused() -> None:
    over = _refused({"qflare.num_examples": "601"}, {"qflare.max_examples": "600"})
    assert over.field == "body.labels.qflare.num_examples" and "600" in str(over)
    assert "QFLARE_REGISTRY_MAX_DECLARED_EXAMPLES" in str(
        _refused({"qflare.num_examples": "11"}, {}, limit=10)
    )
    for bad in ("", "-5", "1e6", "0", "12.5", " 7", str(2**41)):
        assert _refused({"qflare.num_examples": bad}, {}).field == "body.labels.qflare.num_examples"


def test_a_device_cannot_set_or_override_the_operators_max() -> None:
    refused = _refused({"qflare.max_examples": "134000000"}, {"qflare.max_examples": "600"})
    assert refused.field == "body.labels.qflare.max_examples" and "reserved" in str(refused)
    assert _refused({"qflare.max_examples": "5", "qflare.num_examples": "5"}, {}).field == (
        "body.labels.qflare.max_examples"
    )


def test_the_token_may_declare_for_the_device_and_a_bad_token_max_is_refused() -> None:
    assert admitted_labels({}, {"qflare.num_examples": "300"}, limit=LIMIT) == {"qflare.num_examples": "300"}
    assert _refused({"qflare.num_examples": "3"}, {"qflare.max_examples": "lots"}).field == (
        "token.labels.qflare.max_examples"
    )
