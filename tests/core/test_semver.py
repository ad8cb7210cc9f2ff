import pytest

from gitopsd.core import semver


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1.0.0", "1.0.0", 0),
        ("v1.0.0", "1.0.0", 0),
        ("1.0.1", "1.0.0", 1),
        ("1.10.0", "1.9.0", 1),
        ("2.0.0", "10.0.0", -1),
        ("1.0.0-rc.1", "1.0.0", -1),
        ("1.0.0-alpha", "1.0.0-alpha.1", -1),
        ("1.0.0-alpha.beta", "1.0.0-beta", -1),
        ("1.0.0-beta.2", "1.0.0-beta.11", -1),
        ("1.0.0-rc.1", "1.0.0-beta.11", 1),
        ("1.0.0+build.1", "1.0.0", 0),
    ],
    ids=str,
)
def test_compare_follows_semver_precedence(a: str, b: str, expected: int) -> None:
    assert semver.compare(a, b) == expected


@pytest.mark.parametrize("text", ["1.0", "01.0.0", "1.0.0-", "latest", "1.0.0.0"], ids=str)
def test_parse_refuses_non_semver(text: str) -> None:
    with pytest.raises(ValueError, match="not a semantic version"):
        semver.parse(text)


def test_normalize_drops_leading_v() -> None:
    assert semver.normalize("v1.4.2") == "1.4.2"
