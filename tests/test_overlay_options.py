"""Overlay option parsing over every form linux-mount-facts.md section 2 records (6.18)."""

from __future__ import annotations

import pytest
from criu_fw.fsdrivers.overlay.options import (
    OverlayOptionError,
    Role,
    parse_options,
    split_lowerdir,
    unescape,
)
from criu_fw.kernel.mountinfo import parse_line


def opts_of(line: str) -> tuple[str, ...]:
    return parse_line(line.encode()).super_options


def texts(layers: object) -> list[tuple[str, str]]:
    return [(x.role.value, x.text) for x in layers]  # type: ignore[attr-defined]


def test_legacy_fresh_upper_drops_derived_uuid() -> None:
    line = (
        "67 63 0:40 / /W/ovl rw,relatime - overlay overlay "
        "rw,lowerdir=/W/a:/W/b,upperdir=/W/up,workdir=/W/wk,uuid=on"
    )
    o = parse_options(opts_of(line))
    assert texts(o.lowers) == [("lower", "/W/a"), ("lower", "/W/b")]
    assert o.upper is not None and o.upper.text == "/W/up"
    assert o.work is not None and o.work.text == "/W/wk"
    assert o.features == ()  # uuid=on describes the upper's xattr, the kernel derives it
    assert not o.readonly and not o.new_api
    assert [x.role for x in o.layers] == [Role.UPPER, Role.WORK, Role.LOWER, Role.LOWER]


def test_uuid_null_dropped_uuid_off_kept() -> None:
    assert parse_options(["rw", "lowerdir=/a", "uuid=null"]).features == ()
    assert parse_options(["rw", "lowerdir=/a", "uuid=off"]).features == (("uuid", "off"),)


def test_lower_only_is_readonly_with_redirect_dir() -> None:
    o = parse_options(["ro", "lowerdir=/W/a:/W/b", "redirect_dir=on"])
    assert o.readonly and o.upper is None and o.work is None
    assert o.features == (("redirect_dir", "on"),)


def test_feature_switches_kept_in_order() -> None:
    o = parse_options(
        [
            "rw",
            "lowerdir=/a",
            "upperdir=/u",
            "workdir=/w",
            "redirect_dir=nofollow",
            "index=on",
            "uuid=on",
            "nfs_export=on",
            "metacopy=on",
            "xino=off",
            "userxattr",
            "fsync=volatile",
            "verity=on",
            "default_permissions",
        ]
    )
    assert o.features == (
        ("redirect_dir", "nofollow"),
        ("index", "on"),
        ("nfs_export", "on"),
        ("metacopy", "on"),
        ("xino", "off"),
        ("userxattr", None),
        ("fsync", "volatile"),
        ("verity", "on"),
        ("default_permissions", None),
    )


def test_data_only_layers_legacy() -> None:
    o = parse_options(["rw", "lowerdir=/l1:/l2::/do1::/do2", "upperdir=/u", "workdir=/w"])
    assert texts(o.lowers) == [
        ("lower", "/l1"),
        ("lower", "/l2"),
        ("data", "/do1"),
        ("data", "/do2"),
    ]
    assert [x.text for x in o.data_layers] == ["/do1", "/do2"]


@pytest.mark.parametrize(
    "value, message",
    [
        ("/a::/b:/c", "ordinary layer follows a data-only"),
        ("/a:::/b", "three colons"),
        ("/a::", "ends with a separator"),
        (":/a", "empty layer"),
        ("", "empty lowerdir"),
    ],
)
def test_bad_lowerdir(value: str, message: str) -> None:
    with pytest.raises(OverlayOptionError, match=message):
        split_lowerdir(value)


def test_escapes_from_mountinfo_line() -> None:
    # What 6.18 printed for lowerdir=co\:lon:co\,mma:back\\slash:sp ace (measured): octal for
    # backslash, comma and space, the user's own escapes kept inside.
    line = (
        "70 63 0:45 / /W/m1 rw,relatime - overlay overlay rw,"
        r"lowerdir=/W/co\134:lon:/W/co\134\054mma:/W/back\134\134slash:/W/sp\040ace,"
        "upperdir=/W/up,workdir=/W/wk,uuid=on"
    )
    o = parse_options(opts_of(line))
    assert [x.text for x in o.lowers] == ["/W/co:lon", "/W/co,mma", "/W/back\\slash", "/W/sp ace"]
    assert o.lowers[0].raw == "/W/co\\:lon"


def test_new_api_raw_paths_and_datadir() -> None:
    # lowerdir+ values are raw: a colon is a colon, a backslash is a backslash.
    line = (
        "71 63 0:46 / /W/m3 rw,relatime - overlay none rw,"
        r"lowerdir+=/W/co:lon,lowerdir+=/W/back\134slash,lowerdir+=/W/co\054mma,"
        "datadir+=/W/a,upperdir=/W/up3,workdir=/W/wk3,redirect_dir=on,uuid=on,metacopy=on,"
        "fsync=volatile"
    )
    o = parse_options(opts_of(line))
    assert o.new_api
    assert texts(o.lowers) == [
        ("lower", "/W/co:lon"),
        ("lower", "/W/back\\slash"),
        ("lower", "/W/co,mma"),
        ("data", "/W/a"),
    ]
    assert o.lowers[1].option == "lowerdir+" and o.lowers[3].option == "datadir+"
    assert o.features == (("redirect_dir", "on"), ("metacopy", "on"), ("fsync", "volatile"))


def test_relative_and_noncanonical_paths_kept_as_shown() -> None:
    o = parse_options(["rw", "lowerdir=a:b", "upperdir=up", "workdir=wk"])
    assert [x.text for x in o.lowers] == ["a", "b"]
    shown = ["rw", "lowerdir=/W/alink/:/W//b/../b", "upperdir=/W/up8/", "workdir=/W/./wk8"]
    o = parse_options(shown)
    assert [x.text for x in o.lowers] == ["/W/alink/", "/W//b/../b"]


def test_upperdir_backslash_ambiguity_gives_both_spellings() -> None:
    o = parse_options(["rw", "lowerdir+=/l", "upperdir=/x\\y", "workdir=/w"])
    assert o.upper is not None and o.upper.spellings() == ("/xy", "/x\\y")


@pytest.mark.parametrize(
    "options, message",
    [
        (["rw", "upperdir=/u", "workdir=/w"], "no lower layer"),
        (["rw", "lowerdir=/a", "lowerdir+=/b"], "mixed"),
        (["rw", "datadir+=/a", "lowerdir+=/b"], "lowerdir\\+ after datadir\\+"),
        (["rw", "datadir+=/a"], "only data-only"),
        (["rw", "lowerdir=/a", "upperdir=/u"], "together"),
        (["rw", "lowerdir+="], "empty lowerdir\\+"),
    ],
)
def test_malformed(options: list[str], message: str) -> None:
    with pytest.raises(OverlayOptionError, match=message):
        parse_options(options)


def test_500_layers_accepted_501_refused() -> None:
    many = ":".join(f"/L/{i}" for i in range(500))
    assert len(parse_options(["ro", f"lowerdir={many}"]).lowers) == 500
    with pytest.raises(OverlayOptionError, match="501 lower layers"):
        parse_options(["ro", f"lowerdir={many}:/L/x"])


def test_unescape() -> None:
    assert unescape(r"a\:b\,c\\d") == r"a:b,c\d"
    assert unescape("plain") == "plain"
