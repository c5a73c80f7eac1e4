"""The report's Environment section: what produced the reported runs (``environment`` of each record)."""

from __future__ import annotations

from collections import Counter

from wame_dist.report.results import Groups, display_name, runs_by_environment


def environment_markdown(groups: Groups) -> str:
    """A Markdown section naming, per environment signature, its runs and the jobs that ran them.

    A signature names the code (package version, git commit, ``+dirty`` for uncommitted changes), the
    software versions and the accelerator; below it are the hosts, job shapes (world size x nodes) and
    launchers its runs used, which may differ without changing the signature.
    """
    lines = ["## Environment", ""]
    for signature, runs in runs_by_environment(groups).items():
        if signature is None:
            lines.append(f"- {len(runs)} run(s): not recorded (results written before runs recorded it)")
            continue
        rules = Counter(display_name(run.optimizer) for run in runs)
        details = [run.environment_detail for run in runs]
        hosts = sorted({d.get("machine", {}).get("host", "?") for d in details})
        jobs = [d.get("launch", {}) for d in details]
        shapes = sorted(
            {f"{j.get('world_size')} rank(s) on {j.get('nodes')} node(s), {j.get('launcher')}" for j in jobs}
        )
        per_rule = ", ".join(f"{rule} {n}" for rule, n in rules.items())
        lines.append(f"- **{signature}**: {len(runs)} run(s) ({per_rule})")
        lines.append(f"  - hosts: {', '.join(hosts)}")
        lines.append(f"  - jobs: {'; '.join(shapes)}")
    return "\n".join(lines) + "\n"
