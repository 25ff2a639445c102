"""A recording's file: a TraceResult's fields and DataFrames, in one zip.

``manifest.json`` says what it is (format, version), when and where it was made (date,
kernel release, host, ebpfkit version), the cell's C source and options, and the
result's fields; every DataFrame is described there column by column, its data in
``data/N.npy`` (numbers, times, category codes, numeric arrays) or ``data/N.json``
(strings and other Python values, tagged so that bytes, tuples and numpy scalars come
back as they were). Never pickle: a recording is data, readable by any later ebpfkit
and safe to open from anywhere.

Below ``result`` (``TraceResult.save`` writes through ``save`` here) and below
``recording``, which reads the fields back into a TraceResult and picks live, replay
or record. pandas is imported in the functions that make or take frames, as everywhere
in ebpfkit: ``import ebpfkit.result`` does not load it.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import io
import json
import os
import platform
import socket
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ._version import __version__
from .errors import RecordingError

FORMAT = "ebpfkit-recording"
VERSION = 1
MANIFEST = "manifest.json"
# TraceResult fields that are not part of what was traced.
NOT_SAVED = {"announced", "recorded", "cell"}
# pandas' masked (nullable) dtypes: values plus a mask.
_MASKED = {
    *(f"Int{n}" for n in (8, 16, 32, 64)),
    *(f"UInt{n}" for n in (8, 16, 32, 64)),
    "Float32",
    "Float64",
    "boolean",
}
_NUMPY_KINDS = "biufcmM"  # bool, ints, floats, complex, timedelta, datetime


# --------------------------------------------------------------------------- writing


class _Writer:
    """Turns a TraceResult's values into JSON, and its arrays into zip members."""

    def __init__(self, zf: zipfile.ZipFile):
        self.zf = zf
        self.members = 0
        self.frames: dict[str, dict] = {}
        # id(DataFrame) -> (its frame id, the frame, kept alive so that its id stays its own):
        # result.events is also one of result.channels, and is stored once.
        self.seen: dict[int, tuple[str, object]] = {}

    def _member(self, data: bytes, ext: str) -> str:
        name = f"data/{self.members}.{ext}"
        self.members += 1
        self.zf.writestr(name, data)
        return name

    def array(self, arr: np.ndarray) -> str:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
        return self._member(buf.getvalue(), "npy")

    def objects(self, values: list, where: str) -> str:
        data = json.dumps([self.value(v, where) for v in values], separators=(",", ":"))
        return self._member(data.encode(), "json")

    def value(self, v, where: str):
        """A Python value as JSON; what JSON cannot say is tagged as a one-key object."""
        import pandas as pd

        if isinstance(v, pd.DataFrame):
            return {"$frame": self.frame(v, where)}
        if isinstance(v, pd.Series):
            return {
                "$series": self.frame(v.to_frame(name=0), where),
                "name": self.value(v.name, where),
            }
        if isinstance(v, np.ndarray):
            if v.dtype.kind in _NUMPY_KINDS + "SU":
                return {
                    "$ndarray": v.dtype.str,
                    "shape": list(v.shape),
                    "b64": base64.b64encode(np.ascontiguousarray(v).tobytes()).decode(),
                }
            if v.dtype.kind == "O":
                return {
                    "$objarray": [self.value(x, where) for x in v.ravel()],
                    "shape": list(v.shape),
                }
        elif isinstance(v, np.generic):  # before float: np.float64 is a float too
            if v.dtype.kind in _NUMPY_KINDS + "SU":
                return {"$npy": v.dtype.str, "b64": base64.b64encode(v.tobytes()).decode()}
        elif v is None or isinstance(v, (bool, int, float, str)):
            return v
        elif isinstance(v, bytes):
            return {"$bytes": base64.b64encode(v).decode()}
        elif isinstance(v, (list, tuple)):
            items = [self.value(x, where) for x in v]
            return items if isinstance(v, list) else {"$tuple": items}
        elif isinstance(v, dict):
            if all(isinstance(k, str) and not k.startswith("$") for k in v):
                return {k: self.value(x, where) for k, x in v.items()}
            return {"$dict": [[self.value(k, where), self.value(x, where)] for k, x in v.items()]}
        elif v is pd.NaT:
            return {"$nat": None}
        elif v is pd.NA:
            return {"$na": None}
        elif isinstance(v, pd.Timestamp):
            return {
                "$timestamp": v.value,
                "unit": v.unit,
                "tz": None if v.tz is None else str(v.tz),
            }
        elif isinstance(v, pd.Timedelta):
            return {"$timedelta": v.value, "unit": v.unit}
        elif isinstance(v, datetime.datetime):
            return {"$datetime": v.isoformat()}
        raise RecordingError(
            f"cannot save {where}: it holds a {type(v).__name__} value ({v!r:.60}), which "
            "recordings do not keep (numbers, strings, bytes, lists, arrays, times do)"
        )

    def frame(self, df, where: str) -> str:
        if id(df) in self.seen:
            return self.seen[id(df)][0]
        fid = str(len(self.frames))
        self.seen[id(df)] = (fid, df)
        self.frames[fid] = {}  # the id is taken before any frame nested in a column takes one
        self.frames[fid] = {
            "index": self.index(df.index, f"{where}'s index"),
            "columns": self.index(df.columns, f"{where}'s column names"),
            "data": [
                self.column(df.iloc[:, i], f"column {name!r} of {where}")
                for i, name in enumerate(df.columns)
            ],
            "attrs": self.value(dict(df.attrs), f"{where}'s attrs"),
        }
        return fid

    def index(self, idx, where: str) -> dict:
        import pandas as pd

        if type(idx) is pd.RangeIndex:
            return {
                "kind": "range",
                "start": idx.start,
                "stop": idx.stop,
                "step": idx.step,
                "name": self.value(idx.name, where),
            }
        if isinstance(idx, pd.MultiIndex):
            return {
                "kind": "multi",
                "levels": [self.index(idx.get_level_values(i), where) for i in range(idx.nlevels)],
                "names": [self.value(n, where) for n in idx.names],
            }
        return {
            "kind": "index",
            "name": self.value(idx.name, where),
            "values": self.column(idx, where),
        }

    def column(self, values, where: str) -> dict:
        """One column (a Series or an Index) in the form that keeps its dtype exactly."""
        import pandas as pd

        dtype = values.dtype
        if isinstance(dtype, pd.CategoricalDtype):
            return {
                "kind": "category",
                "ordered": bool(dtype.ordered),
                "categories": self.index(dtype.categories, f"the categories of {where}"),
                "codes": self.array(np.asarray(values.array.codes)),
            }
        if isinstance(dtype, pd.DatetimeTZDtype):
            utc = pd.Series(values).dt.tz_convert("UTC").dt.tz_localize(None)
            return {"kind": "datetimetz", "tz": str(dtype.tz), "data": self.array(utc.to_numpy())}
        if isinstance(dtype, pd.StringDtype):
            na = "nan" if dtype.na_value is np.nan else "NA"
            items = [v if isinstance(v, str) else None for v in values]  # NA or NaN: None
            return {
                "kind": "string",
                "storage": dtype.storage,
                "na": na,
                "data": self.objects(items, where),
            }
        if str(dtype) in _MASKED:
            arr = values.array
            return {
                "kind": "masked",
                "dtype": str(dtype),
                "data": self.array(arr.to_numpy(dtype=dtype.numpy_dtype, na_value=0)),
                "mask": self.array(np.asarray(arr.isna())),
            }
        if isinstance(dtype, np.dtype) and dtype.kind in _NUMPY_KINDS:
            return {"kind": "numpy", "data": self.array(np.asarray(values))}
        if isinstance(dtype, np.dtype) and dtype.kind == "O":
            items = list(values)
            first = items[0] if items else None
            if (
                isinstance(first, np.ndarray)
                and first.dtype.kind in _NUMPY_KINDS
                and all(
                    isinstance(v, np.ndarray) and v.dtype == first.dtype and v.shape == first.shape
                    for v in items
                )
            ):
                # Array fields of events (u32 args[6]): one array per row, stored as one block.
                return {"kind": "arrays", "data": self.array(np.stack(items))}
            return {"kind": "objects", "data": self.objects(items, where)}
        raise RecordingError(
            f"cannot save {where}: its dtype {dtype} is not one recordings keep (numbers, bool, "
            "datetime, category, strings, Python objects). Convert it first, e.g. with .astype(str)"
        )


# --------------------------------------------------------------------------- reading


class _Reader:
    """The inverse of _Writer, from an open zip and its manifest."""

    def __init__(self, zf: zipfile.ZipFile, frames: dict):
        self.zf = zf
        self.frame_specs = frames
        self.frames: dict[str, object] = {}

    def array(self, name: str) -> np.ndarray:
        return np.load(io.BytesIO(self.zf.read(name)), allow_pickle=False)

    def objects(self, name: str) -> list:
        return [self.value(v) for v in json.loads(self.zf.read(name))]

    def value(self, v):
        import pandas as pd

        if isinstance(v, list):
            return [self.value(x) for x in v]
        if not isinstance(v, dict):
            return v
        tag = next(iter(v), "") if v else ""
        if not tag.startswith("$"):
            return {k: self.value(x) for k, x in v.items()}
        if tag == "$frame":
            return self.frame(v["$frame"])
        if tag == "$series":
            return self.frame(v["$series"]).iloc[:, 0].rename(self.value(v["name"]))
        if tag == "$ndarray":
            raw = base64.b64decode(v["b64"])
            return np.frombuffer(raw, dtype=np.dtype(v["$ndarray"])).reshape(v["shape"]).copy()
        if tag == "$objarray":
            out = np.empty(len(v["$objarray"]), dtype=object)
            for i, x in enumerate(v["$objarray"]):
                out[i] = self.value(x)
            return out.reshape(v["shape"])
        if tag == "$npy":
            return np.frombuffer(base64.b64decode(v["b64"]), dtype=np.dtype(v["$npy"]))[0]
        if tag == "$bytes":
            return base64.b64decode(v["$bytes"])
        if tag == "$tuple":
            return tuple(self.value(x) for x in v["$tuple"])
        if tag == "$dict":
            return {self.value(k): self.value(x) for k, x in v["$dict"]}
        if tag == "$nat":
            return pd.NaT
        if tag == "$na":
            return pd.NA
        if tag == "$timestamp":
            ts = pd.Timestamp(v["$timestamp"], unit="ns").as_unit(v["unit"])
            return ts if v["tz"] is None else ts.tz_localize("UTC").tz_convert(v["tz"])
        if tag == "$timedelta":
            return pd.Timedelta(v["$timedelta"], unit="ns").as_unit(v["unit"])
        if tag == "$datetime":
            return datetime.datetime.fromisoformat(v["$datetime"])
        raise ValueError(f"unknown tag {tag}")

    def frame(self, fid: str):
        import pandas as pd

        if fid in self.frames:
            return self.frames[fid]
        spec = self.frame_specs[fid]
        index = self.index(spec["index"])
        columns = self.index(spec["columns"])
        n = len(index)
        # Built on a plain range first so that no column is aligned on labels.
        plain = pd.RangeIndex(n)
        series = {
            i: pd.Series(arr, dtype=arr.dtype, index=plain, copy=False)
            for i, arr in enumerate(self.column(c) for c in spec["data"])
        }
        df = pd.DataFrame(series) if series else pd.DataFrame(index=plain)
        df.index = index
        df.columns = columns
        df.attrs.update(self.value(spec.get("attrs") or {}))
        self.frames[fid] = df
        return df

    def index(self, spec: dict):
        import pandas as pd

        name = self.value(spec.get("name"))
        if spec["kind"] == "range":
            return pd.RangeIndex(spec["start"], spec["stop"], spec["step"], name=name)
        if spec["kind"] == "multi":
            levels = [self.index(level) for level in spec["levels"]]
            return pd.MultiIndex.from_arrays(levels, names=[self.value(n) for n in spec["names"]])
        values = self.column(spec["values"])
        return pd.Index(values, dtype=values.dtype, name=name, copy=False)

    def column(self, spec: dict):
        """A numpy array or pandas ExtensionArray with the column's exact dtype."""
        import pandas as pd

        kind = spec["kind"]
        if kind == "numpy":
            return self.array(spec["data"])
        if kind == "category":
            dtype = pd.CategoricalDtype(self.index(spec["categories"]), ordered=spec["ordered"])
            return pd.Categorical.from_codes(self.array(spec["codes"]), dtype=dtype)
        if kind == "datetimetz":
            utc = pd.Series(self.array(spec["data"])).dt.tz_localize("UTC")
            return utc.dt.tz_convert(spec["tz"]).array
        if kind == "string":
            na = np.nan if spec["na"] == "nan" else pd.NA
            try:
                dtype = pd.StringDtype(spec["storage"], na_value=na)
                dtype.construct_array_type()
            except ImportError:  # recorded with pyarrow strings, replayed without pyarrow
                dtype = pd.StringDtype("python", na_value=na)
            return pd.array(self.objects(spec["data"]), dtype=dtype)
        if kind == "masked":
            arr = pd.array(self.array(spec["data"]), dtype=spec["dtype"])
            arr[self.array(spec["mask"])] = pd.NA
            return arr
        if kind in ("arrays", "objects"):
            items = (
                list(self.array(spec["data"])) if kind == "arrays" else self.objects(spec["data"])
            )
            out = np.empty(len(items), dtype=object)
            for i, item in enumerate(items):  # one by one: lists must stay lists, not a 2-D array
                out[i] = item
            return out
        raise ValueError(f"unknown column kind {kind!r}")


# --------------------------------------------------------------------------- files


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def where_and_when() -> dict:
    """What a recording says about the machine that made it."""
    import pandas as pd

    return {
        "date": _now(),
        "system": platform.system(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "hostname": socket.gethostname(),
        "ebpfkit": __version__,
        "python": platform.python_version(),
        "pandas": pd.__version__,
        "numpy": np.__version__,
    }


def save(result, path, *, cell: dict | None = None) -> Path:
    """Write ``result`` (a TraceResult) to ``path``, one zip file; return the path.

    ``cell`` (the C source and options) defaults to the result's own ``cell``.
    The file is written whole or not at all: a crash leaves no half recording.
    """
    path = Path(path)
    fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as e:
        raise RecordingError(f"cannot write a recording to {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as zf:
            writer = _Writer(zf)
            encoded = {
                name: writer.value(value, f"the result's {name}")
                for name, value in fields.items()
                if name not in NOT_SAVED
            }
            manifest = {
                "format": FORMAT,
                "version": VERSION,
                "recorded": where_and_when(),
                "cell": writer.value(cell if cell is not None else fields.get("cell"), "cell"),
                "result": encoded,
                "frames": writer.frames,
            }
            zf.writestr(MANIFEST, json.dumps(manifest, indent=1))
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a recording is for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _damaged(path, why) -> RecordingError:
    return RecordingError(
        f"{path} is a damaged ebpfkit recording ({why}): record it again, or copy it again "
        "if it came from elsewhere"
    )


def read_manifest(zf: zipfile.ZipFile, path) -> dict:
    """The manifest of an open recording, after checking it is one this ebpfkit can read."""
    try:
        manifest = json.loads(zf.read(MANIFEST))
    except KeyError:
        names = zf.namelist()
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise RecordingError(
            f"{path} is a zip file but not an ebpfkit recording: it has no {MANIFEST} "
            f"(it holds {shown or 'nothing'}). Give a file saved by result.save() or "
            "EBPFKIT_MODE=record"
        ) from None
    except (ValueError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise _damaged(path, f"its {MANIFEST} cannot be read: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        what = manifest.get("format") if isinstance(manifest, dict) else None
        raise RecordingError(
            f"{path} is not an ebpfkit recording: its {MANIFEST} says format {what!r}, "
            f"not {FORMAT!r}"
        )
    version = manifest.get("version")
    if not isinstance(version, int) or version < 1:
        raise _damaged(path, f"format version {version!r}")
    if version > VERSION:
        made_by = (manifest.get("recorded") or {}).get("ebpfkit", "a newer version")
        raise RecordingError(
            f"{path} was made by ebpfkit {made_by} in recording format {version}; this ebpfkit "
            f"reads format {VERSION} at most. Upgrade ebpfkit (pip install -U ebpfkit) to replay it"
        )
    return manifest


def read(path) -> tuple[dict, dict, object]:
    """A recording's saved fields by name, when and where it was made (and its path), its cell.

    Every way a file can fail to be a readable recording is a RecordingError that says so.
    """
    path = Path(path)
    if not path.exists():
        raise RecordingError(
            f"no recording at {path}: give the path of a file saved with result.save(), "
            "or make one with EBPFKIT_MODE=record on a machine where eBPF runs"
        )
    if path.is_dir():
        raise RecordingError(f"{path} is a folder, not a recording file")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise RecordingError(f"cannot read the recording {path}: {e.strerror}") from None
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = read_manifest(zf, path)
            reader = _Reader(zf, manifest.get("frames") or {})
            values = {k: reader.value(v) for k, v in (manifest.get("result") or {}).items()}
            cell = reader.value(manifest.get("cell"))
    except zipfile.BadZipFile as e:
        if head == b"PK\x03\x04":  # a zip's first bytes, but no readable end: cut short
            raise _damaged(path, f"it is truncated or corrupt: {e}") from None
        raise RecordingError(
            f"{path} is not an ebpfkit recording (not a zip file): give a file saved by "
            "result.save() or EBPFKIT_MODE=record"
        ) from None
    except RecordingError:
        raise
    except (KeyError, ValueError, TypeError, EOFError, OSError, AttributeError, zlib.error) as e:
        raise _damaged(path, f"{type(e).__name__}: {e}") from None
    return values, {**(manifest.get("recorded") or {}), "path": str(path)}, cell
