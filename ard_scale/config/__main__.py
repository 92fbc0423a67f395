"""Check a recipe without launching anything: `python -m ard_scale.config RECIPE [key=value ...]`.

Prints the resolved config as YAML and its hash, or the list of problems — invalid values and every local path the
recipe names that does not exist here — (exit status 2).
"""

from __future__ import annotations

import sys

import yaml

from ard_scale.config.loader import ConfigError, to_dict
from ard_scale.config.paths import check_paths
from ard_scale.config.schema import config_hash, load_config


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    try:
        cfg = load_config(argv[0], argv[1:])
        check_paths(cfg, source=argv[0])
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None), end="")
    print(f"# config_hash: {config_hash(cfg)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
