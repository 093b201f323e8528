import pytest

from edge_trgl.budget import format_size, parse_size
from edge_trgl.errors import UserError


@pytest.mark.parametrize("text,expected", [
    ("512MB", 512_000_000), ("512M", 512_000_000), ("512mb", 512_000_000),
    ("0.5GiB", 512 * 1024**2), ("1.5G", 1_500_000_000), ("800000000", 800_000_000),
    ("2KiB", 2048), ("1 GB", 10**9), (1234, 1234),
])
def test_parse_size_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["abc", "-1GB", "0", "5XB", "", "1e999GB", "GB", "0MB"])
def test_parse_size_rejects_nonsense(text):
    with pytest.raises(UserError) as info:
        parse_size(text)
    assert "512MB" in str(info.value)


def test_format_size():
    assert format_size(512_000_000) == "512 MB"
    assert format_size(1_430_000_000) == "1.43 GB"
    assert format_size(999) == "999 B"
