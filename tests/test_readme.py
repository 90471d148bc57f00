"""README's Python snippets and prose name only session attributes and methods that exist."""

from __future__ import annotations

import re
from pathlib import Path

from stma_core import InferenceConfig, VideoSession
from stma_core.config import ModelConfig
from stma_core.model.network import STMANetwork

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = ModelConfig(embed_dim=32, stml_depth=1, num_heads=2, key_dim=16, value_dim=32, decoder_dims=(16, 16, 8))


def test_every_session_member_the_readme_names_exists():
    session = VideoSession(STMANetwork(TINY), InferenceConfig(size=64))
    text = README.read_text(encoding="utf-8")
    uses = set(re.findall(r"\bsession\.(\w+)(\(?)", text))
    assert uses, "README names no session member any more; update this test"
    for name, call in sorted(uses):
        assert hasattr(session, name), f"README names session.{name}, which VideoSession does not have"
        if call:
            assert callable(getattr(session, name)), f"README calls session.{name}(), which is not a method"


def test_the_memory_settings_readme_gives_for_the_shipped_model_are_its_own():
    """README lists the shipped model's recommended memory settings; they must be what it carries."""
    import json

    from stma_core import load_model

    text = " ".join(README.read_text(encoding="utf-8").split())
    listed = re.search(r"\(the shipped model: (`--top-k[^`]*`)", text)
    assert listed, "README no longer lists the shipped model's memory settings; update this test"
    given = {k.replace("-", "_"): int(v) for k, v in re.findall(r"--([a-z-]+) (\d+)", listed.group(1))}
    recommended = json.loads(load_model()[2]["inference_config"])
    assert given == {k: recommended[k] for k in given} and len(given) == 6, (given, recommended)


ROOT = README.parent
# repository files the docs and configs send a reader to (placeholders such as NAME.safetensors excepted)
_REPO_PATH = re.compile(r"(?<![\w/.<$-])((?:docs|configs|benchmarks|tests|examples|stma_core|stma_cli)/"
                        r"[A-Za-z0-9_./-]+\.(?:md|py|yaml|json|jsonl|png|safetensors|mp4))")


def test_every_repository_file_the_docs_and_configs_name_exists():
    """The Lite2 GPU configs sent readers to docs/training/lite2_gpu_campaign.md and pyproject.toml to
    tests/test_cli_inputs.py, neither of which exists."""
    texts = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "examples" / "README.md",
             *sorted((ROOT / "configs").glob("*.yaml")), ROOT / "pyproject.toml"]
    missing = [f"{doc.relative_to(ROOT)}: {path}" for doc in texts
               for path in sorted(set(_REPO_PATH.findall(doc.read_text(encoding="utf-8"))))
               if not (ROOT / path.rstrip(".")).exists()]
    assert not missing, f"docs name files that are not in the repository: {missing}"


def test_every_test_the_docs_cite_exists():
    """Docs cite tests as proof (`tests/x.py::name`, `pytest tests/x.py -k key`, `test_name`): each must select one."""
    docs = [README, *sorted((ROOT / "docs").glob("*.md"))]
    text = "\n".join(doc.read_text(encoding="utf-8") for doc in docs)
    defined = {path.name: set(re.findall(r"^def (test_\w+)", path.read_text(encoding="utf-8"), re.M))
               for path in (ROOT / "tests").glob("test_*.py")}
    cited = re.findall(r"tests/(test_\w+\.py)(?:::(test_\w+)| -k (\w+))", text)
    cited += [("", name, "") for name in re.findall(r"`(test_\w+)`", text)]
    assert cited, "the docs cite no test any more; update this test"
    for file, name, key in cited:
        names = defined.get(file, set()) if file else set().union(*defined.values())
        if file:
            assert file in defined, f"docs cite tests/{file}, which does not exist"
        assert not name or name in names, f"docs cite {file}::{name}, which does not exist"
        assert not key or any(key in n for n in names), f"docs' `-k {key}` selects no test in {file}"
