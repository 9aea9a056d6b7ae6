"""The terminal text of a `kiln inspect` report (the dict inspect_data/images/text build)."""

from __future__ import annotations

from typing import Any, Optional

MAX_COLUMNS_SHOWN = 40
MAX_CLASSES_SHOWN = 20
BAR_WIDTH = 30
QUARTILES = (("0", "min"), ("0.25", "25%"), ("0.5", "median"), ("0.75", "75%"), ("1", "max"))


def number(value: Optional[float]) -> str:
    if value is None:
        return "-"
    if value == int(value) and abs(value) < 1e9:
        return str(int(value))
    return f"{value:.4g}"


def clip(value: str, width: int = 16) -> str:
    return value if len(value) <= width else value[: width - 3] + "..."


def share(count: int, total: int) -> str:
    return f"{count} ({count / total:.1%})" if total else str(count)


def header(report: dict[str, Any]) -> list[str]:
    target = report["target"]
    lines = [f"kiln inspect: {report['source']} ({report['kind']}, {report['task']}, target {target['column']!r})"]
    size = f"  {'images' if report['kind'] == 'image' else 'rows'}: {report['rows']:,}"
    if report.get("columns") is not None:
        size += f", columns: {report['columns']}"
    if report.get("rows_used") != report["rows"]:
        size += f"; {report['rows_used']:,} used for training (rows with a target" + (
            ", complete under impute drop)" if report.get("impute") == "drop" else ")")
    lines.append(size)
    sampling = report["sampling"]
    if "note" in sampling:
        lines.append(("  sampled: " if sampling.get("sampled") else "  ") + sampling["note"])
    else:
        lines.append(f"  every row analysed ({sampling['rows_analysed']:,})")
    splits = report.get("splits")
    if splits:
        lines.append(f"  splits ({splits['loading']}, {splits['method']}): train {splits['train']:,}, "
                     f"validation {splits['validation']:,}, test {splits['test']:,}")
    return lines


def column_lines(report: dict[str, Any]) -> list[str]:
    columns = report.get("column_info") or []
    if not columns:
        return []
    rows = report["rows"]
    lines = ["", "columns",
             f"  {'name':<20} {'type':<8} {'missing':>14} {'distinct':>8}  "
             f"{'min':>9} {'25%':>9} {'median':>9} {'75%':>9} {'max':>9} {'outliers':>9}"]
    for col in columns[:MAX_COLUMNS_SHOWN]:
        start = f"  {col['name'][:20]:<20} {col['type']:<8} {share(col['missing'], rows):>14} {col['values']['distinct']:>8}  "
        stats = col.get("numeric")
        if stats:
            q = stats["quantiles"]
            lines.append(start + " ".join(f"{number(q[k]):>9}" for k in ("0", "0.25", "0.5", "0.75", "1"))
                         + f" {stats['outliers']['count']:>9}")
        else:
            text = report.get("text") or {}
            top = ", ".join(f"{clip(v)} {n}" for v, n in col["values"]["top"][:4])
            lines.append(start + ("(text: see below)" if col["name"] == text.get("column") else f"top: {top}"))
    if len(columns) > MAX_COLUMNS_SHOWN:
        lines.append(f"  ... {len(columns) - MAX_COLUMNS_SHOWN} more columns (all in inspect.json)")
    lines.append("  outliers: values beyond 1.5 x IQR from the quartiles"
                 + ("; distinct values, quantiles and outliers are the sample's" if report["sampling"].get("sampled") else ""))
    return lines


def target_lines(report: dict[str, Any]) -> list[str]:
    target = report["target"]
    if "classes" in target:
        classes = target["classes"]
        lines = ["", f"class balance ({len(classes)} classes)"]
        for name, item in list(classes.items())[:MAX_CLASSES_SHOWN]:
            bar = "#" * max(1 if item["count"] else 0, round(item["share"] * BAR_WIDTH))
            lines.append(f"  {name[:20]:<20} {item['count']:>9,} {item['share']:>7.1%}  {bar}")
        if len(classes) > MAX_CLASSES_SHOWN:
            lines.append(f"  ... {len(classes) - MAX_CLASSES_SHOWN} more classes")
        return lines
    dist = target.get("distribution")
    if not dist:
        return []
    q = dist["quantiles"]
    return ["", f"target distribution: mean {number(dist['mean'])}, std {number(dist['std'])}, "
            + ", ".join(f"{label} {number(q[k])}" for k, label in QUARTILES)
            + f", outliers {dist['outliers']['count']}"]


def association_lines(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if report.get("correlations"):
        lines += ["", "strongest associations with the target"]
        lines += [f"  {c['column'][:30]:<30} {c['method']:<10} {c['value']:+.3f}" for c in report["correlations"]]
    dup = report.get("duplicates")
    if dup and dup["rows"] is not None:
        lines += ["", f"duplicate rows: {share(dup['rows'], report['rows'])}"]
    return lines


def image_lines(report: dict[str, Any]) -> list[str]:
    images = report.get("images")
    if not images:
        return []
    w, h, px = images["width"], images["height"], images["pixels"]
    size = lambda s: f"min {number(s['quantiles']['0'])}, median {number(s['quantiles']['0.5'])}, max {number(s['quantiles']['1'])}"  # noqa: E731
    modes = ", ".join(f"{m} {n}" for m, n in images["modes"].items())
    means = ", ".join(f"{n} {m:.3f} (std {s:.3f})" for n, m, s in zip(px["names"], px["mean"], px["std"], strict=True))
    return ["", "images", f"  width:  {size(w)}", f"  height: {size(h)}", f"  modes: {modes}",
            f"  channel means: {means}"]


def text_lines(report: dict[str, Any]) -> list[str]:
    text = report.get("text")
    if not text:
        return []
    words, chars, vocab = text["words"], text["characters"], text["vocabulary"]
    lines = ["", f"text column {text['column']!r} (tokens: {text['tokenizer']})"]
    for label, stats in (("words", words), ("characters", chars)):
        if stats:
            q = stats["quantiles"]
            lines.append(f"  {label} per row: mean {number(stats['mean'])}, median {number(q['0.5'])}, "
                         f"99% {number(q['0.99'])}, max {number(q['1'])}")
    lines.append(f"  empty rows: {text['empty']}")
    covered = "-" if vocab["coverage"] is None else f"{vocab['coverage']:.1%}"
    lines.append(f"  vocabulary: {vocab['built']:,} of vocabSize {vocab['size']:,} from {vocab['distinct_train_tokens']:,} "
                 f"distinct training tokens; covers {covered} of the {vocab['evaluated_on']} split's "
                 f"{vocab['tokens']:,} tokens ({vocab['split']})")
    return lines


def warning_lines(report: dict[str, Any]) -> list[str]:
    warnings = report["warnings"]
    if not warnings:
        return ["", "warnings: none"]
    return ["", f"warnings ({len(warnings)})", *(f"  ! {w['kind']} [{w['column']}]: {w['message']}" for w in warnings)]


def render_report(report: dict[str, Any]) -> str:
    lines = [*header(report), *column_lines(report), *target_lines(report), *association_lines(report),
             *image_lines(report), *text_lines(report), *warning_lines(report)]
    return "\n".join(lines) + "\n"
