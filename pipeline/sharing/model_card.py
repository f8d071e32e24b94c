"""The model card of a shared bundle, built from its metadata, the evaluation report and the training datalist.

A card is a plain dict (stored in the exported ``metadata.json`` under ``model_card``, so ``aamct bundle inspect``
reads it back without parsing Markdown) rendered to ``docs/README.md``. Only aggregate, non-identifying values are
copied in: counts by split, site and class, metrics with their intervals, the frozen threshold. Case ids, patient
ids, paths and file names never enter a card, so a card cannot carry PHI the inputs may hold elsewhere.

MONAI has no model-card generator (model-zoo READMEs are hand-written), hence this module.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.evaluation.handlers import Proportion, RunSummary, read_run_summary
from pipeline.trust.layout import DENSE_MODEL_FILE

__all__ = [
    "DEFAULT_LIMITATIONS",
    "DENSE_MODEL_FILE",
    "MODEL_CARD_KEY",
    "build_model_card",
    "network_summary",
    "class_names_from_metadata",
    "render_model_card",
    "summarize_datalist",
    "summarize_run",
    "summary_lines",
]

#: key of the card inside the exported metadata.json
MODEL_CARD_KEY = "model_card"
_SPLIT_KEYS = ("training", "validation", "test", "external")
_PROPORTIONS = ("sensitivity", "specificity", "ppv", "npv", "accuracy")
#: what a missing number is called in the card (never "n/a": a reader must see whether it is undefined or absent)
_UNDEFINED = "undefined"
DEFAULT_LIMITATIONS: tuple[str, ...] = (
    "Research use only. Not a medical device; it must not be used for diagnosis or any clinical decision.",
    "Performance was measured only on the cohorts summarised above. Scanners, protocols, reconstruction kernels, "
    "contrast phases and populations not represented there may give different results: evaluate on a labelled local "
    "sample before relying on any number in this card.",
    "The operating threshold was frozen on the development data; its sensitivity / specificity trade-off shifts with "
    "prevalence and case mix, so re-check it on local data.",
    "Input must be a single chest CT volume (DICOM series or NIfTI) in Hounsfield units; other modalities, "
    "localisers and multi-phase series are not supported.",
    "Chest scope: `aamct infer` and `aamct evaluate-cohort` measure the lungs in view of every scan (volume, "
    "cranio-caudal extent, HU plausibility; `scope_thresholds` in configs/inference.json) and refuse one without a "
    "chest as `out_of_scope`, never scored. The MONAI-only `configs/inference_torchscript.json` has no such check: it "
    "scores any volume it is given, a head or an abdomen included. Give it chest CTs only.",
    "The heatmaps (`heatmap_kind` in configs/inference.json; `occlusion_c2f`, occlusion sensitivity coarse to fine, by "
    "default) show what the score depends on, at the resolution of the occluded block or layer; they are not lesion "
    "segmentations, and their localisation was measured on generated lesions only (docs/source_README.md, Heatmaps: "
    "pointing game, cost per case and the position-prior baseline).",
)


def _read_json(path: str | os.PathLike, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: {what} is not valid JSON ({err})") from None


def class_names_from_metadata(metadata: Mapping[str, Any]) -> list[str]:
    """Class names in label order: ``class_names`` / ``classes``, else the output ``channel_def``, else indices."""
    for key in ("class_names", "classes"):
        names = metadata.get(key)
        if isinstance(names, list) and names:
            return [str(n) for n in names]
    outputs = (metadata.get("network_data_format") or {}).get("outputs") or {}
    for spec in outputs.values():
        channel_def = spec.get("channel_def") if isinstance(spec, Mapping) else None
        if isinstance(channel_def, Mapping) and channel_def:
            try:
                return [str(channel_def[k]) for k in sorted(channel_def, key=int)]
            except (TypeError, ValueError):
                break
    return []


def summarize_datalist(datalist: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Counts of a MONAI datalist by split, site and class, and patients per split -- numbers only, no ids.

    Args:
        datalist: path or parsed datalist (``{"classes": [...], "training": [...], "test": [...], ...}``).

    Returns:
        ``{"classes": [...], "splits": {split: {"cases": n, "patients": n, "by_site": {site: {class: n}}}}}``;
        ``training`` also carries ``folds`` (number of distinct folds).

    Raises:
        UserError: if the file is unreadable or is not a datalist.
    """
    source = str(datalist) if not isinstance(datalist, Mapping) else "datalist"
    data = datalist if isinstance(datalist, Mapping) else _read_json(datalist, "datalist")
    if not isinstance(data, Mapping) or not any(isinstance(data.get(k), list) for k in _SPLIT_KEYS):
        raise UserError(f"{source}: not a datalist (no 'training' / 'test' / 'external' lists)")
    classes = [str(c) for c in data.get("classes") or []]
    splits: dict[str, Any] = {}
    for split in _SPLIT_KEYS:
        rows = data.get(split)
        if not isinstance(rows, list) or not rows:
            continue
        by_site: dict[str, Counter] = {}
        patients = set()
        folds = set()
        for row in rows:
            site = str(row.get("site") or "unspecified")
            by_site.setdefault(site, Counter())[_class_name(row.get("label"), classes)] += 1
            if row.get("patient_id") not in (None, ""):
                patients.add(row["patient_id"])
            if row.get("fold") not in (None, ""):
                folds.add(row["fold"])
        entry: dict[str, Any] = {
            "cases": len(rows),
            "patients": len(patients) if patients else None,
            "by_site": {site: dict(sorted(counts.items())) for site, counts in sorted(by_site.items())},
        }
        if split == "training" and folds:
            entry["folds"] = len(folds)
        splits[split] = entry
    return {"classes": classes, "splits": splits}


def _class_name(label: Any, classes: Sequence[str]) -> str:
    if label is None or label == "":
        return "unlabelled"
    if isinstance(label, bool):
        label = int(label)
    if isinstance(label, int) and 0 <= label < len(classes):
        return classes[label]
    return str(label)


def _proportion(estimate: Proportion) -> dict[str, Any]:
    return {
        "value": estimate.value,
        "ci": list(estimate.ci) if estimate.ci else None,
        "numerator": estimate.numerator,
        "denominator": estimate.denominator,
    }


def summarize_run(summary: RunSummary | Mapping[str, Any]) -> dict[str, Any]:
    """The numbers of a run summary (``metrics.json``) a model card shows (whitelisted: no paths, no case ids).

    The run summary is read by :func:`pipeline.evaluation.handlers.read_run_summary`, the reader beside its writer;
    its ``provenance`` (local paths) is never copied.

    Args:
        summary: a :class:`~pipeline.evaluation.handlers.RunSummary`, or the parsed ``metrics.json``.

    Returns:
        ``{"split": headline split, "splits": {name: {n, n_positive, n_negative, auc, auc_ci, auc_bootstrap_ci,
        auc_note, confidence, delong_scale, sensitivity: {value, ci, numerator, denominator}, ...}},
        "threshold": {...} | None, "notes": [...]}``.

    Raises:
        UserError: ``summary`` is not a run summary.
    """
    if not isinstance(summary, RunSummary):
        summary = read_run_summary(summary)
    splits: dict[str, Any] = {}
    for name, split in summary.splits.items():
        splits[name] = {
            "n": split.n,
            "n_positive": split.n_positive,
            "n_negative": split.n_negative,
            "auc": split.auc,
            "auc_ci": list(split.auc_ci) if split.auc_ci else None,
            "auc_bootstrap_ci": list(split.auc_bootstrap_ci) if split.auc_bootstrap_ci else None,
            "auc_note": split.auc_note,
            "confidence": split.confidence,
            "delong_scale": split.delong_scale,
            **{metric: _proportion(split.proportion(metric)) for metric in _PROPORTIONS},
        }
    operating = summary.operating_point or summary.headline.operating_point or {}
    threshold_value = operating.get("threshold", summary.headline.threshold)
    threshold = None
    if isinstance(threshold_value, (int, float)) and not isinstance(threshold_value, bool):
        threshold = {
            "value": float(threshold_value),
            **{
                key: operating.get(key)
                for key in (
                    "method",
                    "chosen_on",
                    "target_sensitivity",
                    "n_validation",
                    "validation_sensitivity",
                    "validation_specificity",
                )
            },
        }
    notes = [f"{name}: {split.auc_note}" for name, split in summary.splits.items() if split.auc_note]
    return {"split": summary.split, "splits": splits, "threshold": threshold, "notes": notes}


def build_model_card(
    metadata: Mapping[str, Any],
    *,
    name: str,
    run_summary: RunSummary | Mapping[str, Any] | None = None,
    data_summary: Mapping[str, Any] | None = None,
    limitations: Sequence[str] = (),
    network: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the card (a JSON-serialisable dict).

    Args:
        metadata: the (released) bundle metadata.
        name: bundle name (the zip's top-level folder).
        run_summary: the run's ``metrics.json`` (read or parsed), or ``None`` (the card then says no evaluation
            was supplied).
        data_summary: from :func:`summarize_datalist`, or ``None``.
        limitations: extra limitations, after :data:`DEFAULT_LIMITATIONS` and any ``limitations`` in the metadata.
        network: which model the weights are (:func:`network_summary`): registry name, arguments, parameters, how
            it was made (trained / distilled from a teacher), and the exporter's reason for exporting it.

    Returns:
        The card dict.
    """
    metrics = summarize_run(run_summary) if run_summary is not None else None
    threshold = metrics["threshold"] if metrics else None
    extra = metadata.get("limitations") or []
    all_limitations = (
        list(DEFAULT_LIMITATIONS)
        + ([extra] if isinstance(extra, str) else [str(x) for x in extra])
        + [str(x) for x in limitations]
    )
    if metrics:
        all_limitations += [f"Evaluation note: {note}" for note in metrics["notes"]]
    inputs = (metadata.get("network_data_format") or {}).get("inputs") or {}
    image_spec = next(iter(inputs.values()), {}) if inputs else {}
    return {
        "name": name,
        "version": metadata.get("version"),
        "task": metadata.get("task"),
        "description": metadata.get("description"),
        "intended_use": metadata.get("intended_use") or "Research use only; not for clinical decisions.",
        "authors": metadata.get("authors"),
        "copyright": metadata.get("copyright"),
        "classes": class_names_from_metadata(metadata),
        "data_source": metadata.get("data_source"),
        "input": {
            key: image_spec.get(key) for key in ("modality", "format", "num_channels", "spatial_shape", "value_range")
        },
        "network": dict(network) if network is not None else None,
        "training_data": dict(data_summary) if data_summary is not None else None,
        "metrics": metrics,
        "operating_threshold": threshold,
        "limitations": all_limitations,
        "changelog": dict(metadata.get("changelog") or {}),
        "software": {
            key: metadata.get(key) for key in ("monai_version", "pytorch_version", "numpy_version") if key in metadata
        },
    }


# ---------------------------------------------------------------------------------------------------- formatting


def _pct(estimate: Mapping[str, Any] | None, confidence: float | None) -> str:
    if not estimate or estimate.get("value") is None:
        return _UNDEFINED
    text = f"{100 * estimate['value']:.1f}%"
    parts = []
    ci = estimate.get("ci")
    if ci and None not in ci:
        parts.append(f"{_level(confidence)} CI {100 * ci[0]:.1f}-{100 * ci[1]:.1f}")
    if estimate.get("numerator") is not None and estimate.get("denominator") is not None:
        parts.append(f"{estimate['numerator']}/{estimate['denominator']}")
    return f"{text} ({'; '.join(parts)})" if parts else text


def _auc(value: float | None, ci: Sequence[float] | None, confidence: float | None) -> str:
    if value is None:
        return _UNDEFINED
    if ci and None not in ci:
        return f"{value:.3f} ({_level(confidence)} CI {ci[0]:.3f}-{ci[1]:.3f})"
    return f"{value:.3f} (CI undefined)"


def _level(confidence: float | None) -> str:
    return f"{100 * (confidence or 0.95):g}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    def cell(value: Any) -> str:
        return str("" if value is None else value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines


def _data_section(summary: Mapping[str, Any] | None) -> list[str]:
    if not summary:
        return ["No training datalist was supplied at export, so the data cannot be summarised here."]
    splits = summary.get("splits", {})
    classes = list(summary.get("classes") or [])
    # one column per class, plus any label the class list does not name (e.g. "unlabelled")
    columns = classes + sorted(
        {c for e in splits.values() for counts in e["by_site"].values() for c in counts} - set(classes)
    )
    lines = ["Counts of cases by split, site and class (no identifiers are included).", ""]
    for split, entry in splits.items():
        patients = f", {entry['patients']} patients" if entry.get("patients") else ""
        folds = f", {entry['folds']} cross-validation folds" if entry.get("folds") else ""
        lines.append(f"- {split}: {entry['cases']} cases{patients}{folds}")
    rows = [
        [split, site, *[counts.get(c, 0) for c in columns], sum(counts.values())]
        for split, entry in splits.items()
        for site, counts in entry["by_site"].items()
    ]
    return [*lines, "", *_table(["split", "site", *columns, "total"], rows)]


def _metrics_section(metrics: Mapping[str, Any] | None) -> list[str]:
    if not metrics or not metrics.get("splits"):
        return [
            "No evaluation was supplied at export: this bundle has **no measured performance**. Evaluate the run "
            "(`python -m monai.bundle run evaluating ...` or `make evaluate`) and export again with "
            "`--report RUN/metrics.json`."
        ]
    scales = sorted({str(m.get("delong_scale") or "logit") for m in metrics["splits"].values()})
    scale_text = " and ".join(
        "on the logit scale" if scale == "logit" else "AUC ± z·SE (R pROC's DeLong interval)" for scale in scales
    )
    lines = [
        f"Headline split: **{metrics.get('split')}**. AUC intervals are DeLong's, {scale_text}; proportions carry "
        "their binomial (Wilson) intervals and counts. Threshold metrics use the frozen operating threshold below.",
        "",
    ]
    rows = []
    for split, m in metrics["splits"].items():
        conf = m.get("confidence")
        rows.append(
            [
                split,
                m.get("n"),
                f"{m.get('n_positive')}/{m.get('n_negative')}",
                _auc(m.get("auc"), m.get("auc_ci"), conf),
                *[_pct(m.get(name), conf) for name in _PROPORTIONS],
            ]
        )
    lines += _table(["split", "n", "pos/neg", "AUC", "sensitivity", "specificity", "PPV", "NPV", "accuracy"], rows)
    for note in metrics.get("notes") or []:
        lines += ["", f"Note: {note}"]
    return lines


def _threshold_text(threshold: Mapping[str, Any] | None) -> str:
    if not threshold:
        return "No frozen operating threshold was supplied; tools fall back to 0.5, which was not chosen on data."
    how = {
        "validation": f"chosen on {threshold.get('n_validation')} validation cases",
        "given": "fixed in advance by the developers",
        "default": "a default nobody chose (no validation data)",
    }.get(str(threshold.get("chosen_on")), str(threshold.get("chosen_on")))
    method = threshold.get("method")
    target = threshold.get("target_sensitivity")
    method_text = {
        "youden": "maximising Youden's J",
        "target_sensitivity": f"as the most specific threshold with sensitivity >= {target}",
    }.get(str(method), str(method))
    return (
        f"Call a case positive when its positive-class probability is >= **{threshold['value']:.6g}** "
        f"({how}, {method_text}). The threshold is frozen: apply it unchanged to new cohorts."
    )


def network_summary(
    record: Mapping[str, Any] | None, *, parameters: int | None = None, why: str | None = None
) -> dict[str, Any]:
    """Which model a card describes, from the weights' run record (``models/run.json``).

    Args:
        record: the parsed run record (``None``: unknown).
        parameters: the network's parameter count.
        why: the exporter's reason for exporting this model (e.g. why the trained network and not its student).

    Returns:
        ``{"name", "kwargs", "parameters", "made_by", "teacher", "seed", "why"}``.
    """
    record = record or {}
    return {
        "name": record.get("network_name"),
        "kwargs": dict(record.get("network_kwargs") or {}),
        "parameters": parameters,
        "made_by": record.get("written_by"),
        "teacher": record.get("teacher"),
        "seed": record.get("seed"),
        "why": why,
    }


def _network_lines(network: Mapping[str, Any] | None) -> list[str]:
    if not network or not network.get("name"):
        return ["- Network: not recorded (the weights came without their run record)."]
    kwargs = ", ".join(f"{k}={v}" for k, v in (network.get("kwargs") or {}).items())
    made = network.get("made_by") or "unknown"
    if network.get("teacher"):
        made = f"{made}, distilled from {network['teacher']}"
    params = f", {network['parameters']:,} parameters" if network.get("parameters") else ""
    seed = f", training seed {network['seed']}" if network.get("seed") is not None else ""
    lines = [f"- Network: `{network['name']}`{f' ({kwargs})' if kwargs else ''}{params}; made by {made}{seed}."]
    if network.get("why"):
        lines.append(f"- Why this model: {network['why']}")
    return lines


def render_model_card(card: Mapping[str, Any]) -> str:
    """The card as Markdown (``docs/README.md`` of the exported bundle).

    Args:
        card: from :func:`build_model_card`.

    Returns:
        Markdown text.
    """
    name = card["name"]
    archive = f"{name}_v{card.get('version')}.zip"
    classes = ", ".join(f"{i} = {c}" for i, c in enumerate(card.get("classes") or [])) or "see metadata.json"
    inp = card.get("input") or {}
    lines = [
        f"# {name} — model card",
        "",
        f"Version **{card.get('version')}**. {card.get('task') or ''}",
        "",
        "## Intended use",
        "",
        str(card.get("intended_use")),
        "",
        "## Model",
        "",
        str(card.get("description") or ""),
        "",
        f"- Input: {inp.get('num_channels')} channel {inp.get('modality') or ''} volume ({inp.get('format')}), "
        f"network input size {inp.get('spatial_shape')} voxels (x, y, z) after preprocessing, values in "
        f"{inp.get('value_range')}.",
        f"- Output: class probabilities, index {classes}.",
        "- Files: `models/model.pt` (state dict), `models/model.ts` (TorchScript classifier: "
        "`(B, 1, x, y, z)` -> `(B, C)` logits, as `network_data_format` in `configs/metadata.json` says), "
        f"`models/{card.get('dense_model') or DENSE_MODEL_FILE}` (TorchScript dense class-logit map, "
        "`(B, 1, x, y, z)` -> `(B, C, x/s, y/s, z/s)` with the network's output stride s, for whole-volume "
        "sliding-window inference and heatmaps), `configs/` (MONAI bundle configs), `large_files.yml` (the model "
        "files with their sha256), `checksums.sha256`.",
        *_network_lines(card.get("network")),
        "",
        "## Training data",
        "",
        *([f"Source: {card['data_source']}", ""] if card.get("data_source") else []),
        *_data_section(card.get("training_data")),
        "",
        "## Performance",
        "",
        *_metrics_section(card.get("metrics")),
        "",
        "## Operating threshold",
        "",
        _threshold_text(card.get("operating_threshold")),
        "",
        "## Limitations",
        "",
        *[f"- {item}" for item in card.get("limitations") or []],
        "",
        "## How to use",
        "",
        "Check the archive first: `aamct bundle verify` checks who made it (`--trust` the sender's public key, or "
        "`--expect-sha256` the zip digest they publish), its integrity and size caps, reads the configs as data "
        "(every expression must be the exporter's), loads the weights weights-only, checks the TorchScript "
        "operators before running them in a time- and memory-limited child, and lists every `$` expression and "
        "`_target_` that `python -m monai.bundle run` would execute:",
        "",
        "```bash",
        f"aamct bundle verify {archive} --trust SENDER.pub   # or --expect-sha256 DIGEST",
        f"aamct bundle inspect {archive}",
        f"cd {name} && sha256sum -c checksums.sha256   # without aamct, after unzipping",
        "```",
        "",
        "**`python -m monai.bundle run` executes the configs.** MONAI evaluates every `$` expression with Python's "
        "`eval` and imports every `_target_`, by design; `torch.jit.load` runs TorchScript code. Run the "
        "MONAI-only command below only on a bundle that `aamct bundle verify` passed, from a sender you checked.",
        "",
        "Cohort inference with **only MONAI installed** (plus nibabel for NIfTI, pydicom for DICOM):",
        "",
        "```bash",
        f"unzip {archive}",
        f"python -m monai.bundle run inference --config_file {name}/configs/inference_torchscript.json \\",
        f"    --meta_file {name}/configs/metadata.json --bundle_root {name} \\",
        "    --dataset_dir /path/to/cohort --image_glob '*.nii.gz' --output_dir predictions",
        "# DICOM: one sub-folder per series under dataset_dir, and --image_glob '*/'",
        "```",
        "",
        "`predictions/predictions.csv` has one row per case: the input path, then one probability per class. "
        "With aamct installed, `aamct infer` on the zip adds heatmaps and a status/reason per case.",
        "",
        "Check the classifier against its metadata with stock MONAI:",
        "",
        "```bash",
        f"python -m monai.bundle verify_net_in_out classifier_def --meta_file {name}/configs/metadata.json \\",
        f"    --config_file {name}/configs/inference_torchscript.json --bundle_root {name} --device cpu",
        f"python -m monai.bundle download_large_files --bundle_path {name}   # sha256 of every model file",
        "```",
        "",
        "## Changelog",
        "",
        *[f"- {version}: {text}" for version, text in (card.get("changelog") or {}).items()],
        "",
        "## Authors and licence",
        "",
        f"{card.get('authors') or ''}. {card.get('copyright') or ''}. See `LICENSE`.",
        "",
    ]
    return "\n".join(lines)


def summary_lines(card: Mapping[str, Any]) -> list[str]:
    """A short terminal summary of a card (``aamct bundle inspect``)."""
    lines = [
        f"bundle     {card.get('name')} {card.get('version')}",
        f"task       {card.get('task')}",
        f"use        {card.get('intended_use')}",
        f"classes    {', '.join(card.get('classes') or [])}",
    ]
    data = card.get("training_data")
    if data:
        for split, entry in data.get("splits", {}).items():
            sites = ", ".join(
                f"{site} ({', '.join(f'{c} {n}' for c, n in counts.items())})"
                for site, counts in entry["by_site"].items()
            )
            lines.append(f"data       {split}: {entry['cases']} cases; {sites}")
    else:
        lines.append("data       not summarised (no datalist at export)")
    metrics = card.get("metrics")
    if metrics and metrics.get("splits"):
        for split, m in metrics["splits"].items():
            conf = m.get("confidence")
            lines.append(
                f"metrics    {split}: n={m.get('n')} AUC {_auc(m.get('auc'), m.get('auc_ci'), conf)}; "
                f"sens {_pct(m.get('sensitivity'), conf)}; spec {_pct(m.get('specificity'), conf)}"
            )
    else:
        lines.append("metrics    none (no run summary at export)")
    threshold = card.get("operating_threshold")
    lines.append(
        f"threshold  {threshold['value']:.6g} ({threshold.get('method')}, chosen on {threshold.get('chosen_on')})"
        if threshold
        else "threshold  none frozen (0.5 default)"
    )
    for item in (card.get("limitations") or [])[:2]:
        lines.append(f"limitation {item}")
    if len(card.get("limitations") or []) > 2:
        lines.append(f"           (+{len(card['limitations']) - 2} more in docs/README.md)")
    return lines
