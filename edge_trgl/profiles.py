"""Device profiles: small TOML files in the repository's profiles/ folder (or a path), each
stating the device, its RAM, what the OS keeps, the default backend/device and threads, and the
command that uses it. `--profile NAME` sets the budget (RAM minus the OS reserve) and defaults."""

from __future__ import annotations

import os
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (JetPack 6's Ubuntu 22.04): the same parser, as the tomli package
    import tomli as tomllib

from .budget import parse_size
from .errors import UserError

REQUIRED = ("name", "device", "ram", "os_reserve", "backend", "device_type", "threads", "command")


def profiles_dir() -> Path:
    env = os.environ.get("EDGE_TRGL_PROFILES")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "profiles"


def available() -> list[str]:
    d = profiles_dir()
    return sorted(p.stem for p in d.glob("*.toml")) if d.is_dir() else []


def load_profile(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if path.suffix != ".toml" or not path.exists():
        path = profiles_dir() / f"{name_or_path}.toml"
    if not path.exists():
        raise UserError(f"Unknown device profile {name_or_path!r}. Available profiles: "
                        f"{', '.join(available()) or '(none found in ' + str(profiles_dir()) + ')'}; "
                        f"or give the path of a .toml profile file.")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"The device profile {path} is not valid TOML ({exc}).") from None
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise UserError(f"The device profile {path} lacks {', '.join(missing)}; every profile "
                        f"states {', '.join(REQUIRED)}.")
    ram = parse_size(data["ram"], what=f"RAM of profile {path.name}")
    reserve = parse_size(data["os_reserve"], what=f"os_reserve of profile {path.name}")
    if reserve >= ram:
        raise UserError(f"The device profile {path} reserves {data['os_reserve']} for the OS out of "
                        f"{data['ram']} of RAM, leaving nothing to train with.")
    return {**data, "path": str(path), "ram_bytes": ram, "os_reserve_bytes": reserve,
            "budget_bytes": ram - reserve, "unified_memory": bool(data.get("unified_memory", False))}


def apply_profile(cfg) -> None:
    """Fill in the profile's defaults where the user did not choose: threads, and the backend and
    device that profile_target.apply_profile_target decided (it calls this; the decision asks
    the targets, which this module must not import). The budget itself is the target's to
    derive (MemoryModel.profile_budget). Calling it again changes nothing."""
    if cfg.profile is None:
        return
    prof = load_profile(cfg.profile)
    if cfg.threads is None:
        cfg.threads = min(int(prof["threads"]), os.cpu_count() or 1)
    chosen_target = cfg.extra.get("profile_target")
    if isinstance(chosen_target, dict):
        cfg.backend, cfg.device = str(chosen_target["backend"]), str(chosen_target["device"])


def target_note(cfg) -> list[str]:
    """The plan's note on the backend / device a profile chose (empty without a profile)."""
    rec = cfg.extra.get("profile_target") if isinstance(cfg.extra, dict) else None
    return [str(rec["note"])] if isinstance(rec, dict) and rec.get("note") else []
