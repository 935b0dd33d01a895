"""The picture that opens docs/architecture.md stays true to the code.

The Mermaid block marks its nodes with classes: `process` nodes are `llmq <command>` for
every long-running command that docker-compose.yml and deploy/k8s/ run, `queue` nodes are the
queues of llmq/queues.py, `table` nodes the tables of llmq/models.py. Edge labels that name a
`llmq.…` task or queue must name a real one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from llmq import queues
from llmq.models import Base

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"

NODE = re.compile(r'^(\w+)\s*[\[({]+"([^"]+)"[\])}]+$')
EDGE = re.compile(r'^([\w\s&]+?)\s*(?:-->|-\.->)\s*(?:\|"([^"]*)"\|\s*)?([\w\s&]+)$')
CLASS = re.compile(r"^class\s+([\w,]+)\s+(\w+)$")


@dataclass
class Diagram:
    labels: dict[str, str] = field(default_factory=dict)  # node id -> label
    edges: list[tuple[str, str, str]] = field(default_factory=list)  # (from, label, to)
    classes: dict[str, set[str]] = field(default_factory=dict)  # class -> node ids

    def of_class(self, name: str) -> dict[str, str]:
        return {node: self.labels[node] for node in self.classes.get(name, set())}


def opening_mermaid(text: str) -> str:
    """The Mermaid block right under the page's title."""
    match = re.match(r"# [^\n]+\n\n```mermaid\n(.*?)\n```\n", text, re.S)
    assert match, "docs/architecture.md must open with a ```mermaid block under its title"
    return match.group(1)


def parse(block: str) -> Diagram:
    diagram = Diagram()
    for raw in block.splitlines():
        line = raw.strip()
        if line in ("", "end") or line.startswith(("flowchart ", "subgraph ", "classDef ", "%%")):
            continue
        if node := NODE.match(line):
            diagram.labels[node.group(1)] = node.group(2)
        elif edge := EDGE.match(line):
            sources, label, targets = edge.group(1), edge.group(2) or "", edge.group(3)
            diagram.edges += [
                (a.strip(), label, b.strip())
                for a in sources.split("&")
                for b in targets.split("&")
            ]
        elif marked := CLASS.match(line):
            diagram.classes.setdefault(marked.group(2), set()).update(marked.group(1).split(","))
        else:
            raise AssertionError(f"a line of the picture this test cannot read: {line!r}")
    return diagram


@pytest.fixture(scope="module")
def diagram() -> Diagram:
    return parse(opening_mermaid(DOC.read_text()))


def long_running_commands() -> set[str]:
    """`llmq <command>` of every service or pod that keeps running (not a one-shot job)."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"].values()
    argvs = [s.get("command") for s in services if s.get("restart") != "no"]  # not migrate
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "Deployment":
                pod = doc["spec"]["template"]["spec"]
                argvs += [c.get("command", []) + c.get("args", []) for c in pod["containers"]]
    return {argv[1] for argv in argvs if isinstance(argv, list) and argv[:1] == ["llmq"]}


def test_every_node_is_drawn_and_every_edge_joins_drawn_nodes(diagram):
    assert diagram.edges
    for source, _, target in diagram.edges:
        assert {source, target} <= set(diagram.labels), (source, target)
    linked = {n for source, _, target in diagram.edges for n in (source, target)}
    for kind in ("process", "queue", "table"):
        marked = diagram.of_class(kind)
        assert marked, f"no node is marked `{kind}`"
        assert set(marked) <= linked, f"{kind} nodes with no edge: {set(marked) - linked}"


def test_the_processes_are_the_long_running_llmq_commands(diagram):
    commands = long_running_commands()
    assert {"api", "worker", "webhook-worker", "scheduler", "flower"} <= commands
    drawn = set()
    for label in diagram.of_class("process").values():
        words = label.split()
        assert words[0] == "llmq", f"a process is drawn as its command: {label!r}"
        drawn.add(words[1])
    assert drawn == commands


def test_the_queues_and_task_names_are_those_of_llmq_queues(diagram):
    named = vars(queues)
    real_queues = {v for k, v in named.items() if k.endswith("_QUEUE")}
    real_queues |= {queues.queue_name("{model}"), queues.batch_queue_name("{model}")}
    tasks = {v for k, v in named.items() if k.endswith("_TASK")}
    assert set(diagram.of_class("queue").values()) == real_queues
    labels = " ".join(label for _, label, _ in diagram.edges)
    mentioned = set(re.findall(r"\bllmq\.[\w.]*\w", labels))
    assert mentioned <= tasks | real_queues, mentioned - tasks - real_queues
    assert tasks <= mentioned, f"tasks the picture does not show: {tasks - mentioned}"


def test_the_tables_are_those_of_llmq_models(diagram):
    assert set(diagram.of_class("table").values()) == set(Base.metadata.tables)


def test_the_reader_can_trust_the_parser():
    block = opening_mermaid(
        '# T\n\n```mermaid\nflowchart LR\n    a["llmq api"]\n    b[("jobs")]\n'
        '    a -->|"x"| b & a\n    class a process\n```\n'
    )
    parsed = parse(block)
    assert parsed.labels == {"a": "llmq api", "b": "jobs"}
    assert parsed.edges == [("a", "x", "b"), ("a", "x", "a")]
    assert parsed.of_class("process") == {"a": "llmq api"}
    with pytest.raises(AssertionError):
        parse("a => b")


def test_readme_links_to_the_picture():
    assert "](docs/architecture.md)" in (ROOT / "README.md").read_text()
