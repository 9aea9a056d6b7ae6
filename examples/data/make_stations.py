"""Regenerate examples/data/stations.csv: hourly readings of two weather stations.

`temp` follows a daily cycle (period 24) with a slow drift; `value` (what timeseries-lstm.yaml
forecasts one hour ahead) follows temp with a lag of three hours plus a 12-hour cycle and noise.
Run from the repository root: python examples/data/make_stations.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

HOURS = 720  # 30 days per station


def station(name: str, rng: np.random.Generator) -> pd.DataFrame:
    t = np.arange(HOURS)
    phase = rng.uniform(0, 2 * np.pi)
    temp = 15 + 8 * np.sin(2 * np.pi * t / 24 + phase) + 2 * np.sin(2 * np.pi * t / 240) + rng.normal(0, 0.3, HOURS)
    lagged = np.roll(temp, 3)
    lagged[:3] = temp[:3]
    value = 0.6 * lagged + 3 * np.sin(2 * np.pi * t / 12 + phase) + rng.normal(0, 0.3, HOURS)
    return pd.DataFrame({"station": name, "hour": t, "temp": temp.round(2), "value": value.round(2)})


def main() -> None:
    rng = np.random.default_rng(7)
    frame = pd.concat([station("north", rng), station("south", rng)], ignore_index=True)
    frame.to_csv(Path(__file__).with_name("stations.csv"), index=False)


if __name__ == "__main__":
    main()
