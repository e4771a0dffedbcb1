"""The Dockerfiles, checked without a container engine: what they install, run and copy."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from extractor_service.manifest import Manifest, make_version, write_manifest
from extractor_service.settings import ENV_PREFIX as EXTRACTOR_PREFIX
from extractor_service.settings import ExtractorSettings
from search_service.settings import ENV_PREFIX as SEARCH_PREFIX
from search_service.settings import SearchSettings
from service_core.config import load_settings
from service_core.settings import ServerSettings
from tests.deploy.conftest import DEPLOY, ROOT

DOCKER = DEPLOY / "docker"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Serving image -> the one extra it installs, and the settings its server reads.
SERVING: dict[str, tuple[str, type[ServerSettings], str]] = {
    "extractor": ("extractor", ExtractorSettings, EXTRACTOR_PREFIX),
    "extractor-gpu": ("extractor", ExtractorSettings, EXTRACTOR_PREFIX),
    "search": ("search", SearchSettings, SEARCH_PREFIX),
}
ALL_IMAGES = (*SERVING, "model")
# Image -> the top-level packages its build context carries: what serving (or exporting)
# needs, and so all that `pip install .[extra]` can install.
EXTRACTOR_PACKAGES = frozenset({"imagesearch", "service_core", "extractor_service"})
PACKAGES = {
    "extractor": EXTRACTOR_PACKAGES,
    "extractor-gpu": EXTRACTOR_PACKAGES,
    "search": frozenset({"imagesearch", "service_core", "search_service"}),
    "model": EXTRACTOR_PACKAGES,
}
TOP_LEVEL_PACKAGES = frozenset(p.parent.name for p in ROOT.glob("*/__init__.py"))
SETTINGS = {EXTRACTOR_PREFIX: ExtractorSettings, SEARCH_PREFIX: SearchSettings}
MODEL_DIR = "/opt/imagesearch/model"


@dataclass
class Stage:
    base: str
    name: str | None
    args: dict[str, str] = field(default_factory=dict)
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [value for key, value in self.instructions if key == keyword]


def logical_lines(text: str) -> list[str]:
    """Instructions with their continuation lines joined; comments and blanks dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "a continuation line ends the file"
    return lines


def substitute(text: str, args: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in args, f"${name} has no default"
        return args[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, text)


def parse(name: str) -> list[Stage]:
    """The stages of deploy/docker/NAME.Dockerfile, FROM and ARG defaults resolved."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines((DOCKER / f"{name}.Dockerfile").read_text()):
        keyword, _, value = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG":
            key, _, default = value.partition("=")
            (stages[-1].args if stages else global_args)[key] = default
        elif keyword == "FROM":
            words = value.split()
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(substitute(words[0], global_args), alias))
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append((keyword, value))
    return stages


def shell_commands(stage: Stage) -> list[list[str]]:
    """Each command of the stage's shell-form RUN lines, as words, ARG defaults resolved."""
    commands = []
    for run in stage.all("RUN"):
        if run.startswith("["):
            continue
        for command in re.split(r"&&|;|\bthen\b|\bfi\b", run):
            words = shlex.split(command)
            if words:
                commands.append(words)
    return commands


def pip(stage: Stage, verb: str) -> list[list[str]]:
    """The arguments (no options) of each `pip VERB` in the stage."""
    found = []
    for words in shell_commands(stage):
        if len(words) > 2 and words[0].endswith("/pip") and words[1] == verb:
            found.append([substitute(w, stage.args) for w in words[2:] if not w.startswith("-")])
    return found


def extras_of(argument: str) -> set[str]:
    match = re.fullmatch(r"\.\[([a-z0-9_,-]+)\]", argument)
    assert match, f"{argument!r} is not the project with extras"
    return set(match.group(1).split(","))


def makefile_extras() -> set[str]:
    match = re.search(r"^EXTRAS \?= (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match
    return set(match.group(1).split(","))


def env(stage: Stage) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in stage.all("ENV"):
        for word in shlex.split(line):
            key, _, value = word.partition("=")
            values[key] = value
    return values


def exec_form(value: str) -> list[str]:
    words = json.loads(value)
    assert isinstance(words, list), value
    assert all(isinstance(w, str) for w in words), value
    return words


def env_file(path: Path) -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_base_images_are_pinned_tags(name: str) -> None:
    stages = parse(name)
    aliases: set[str] = set()
    for stage in stages:
        if stage.base in aliases or stage.base == "scratch":
            pass
        elif stage.name == "model" and name != "model":
            # The model image this repository builds (model.Dockerfile), by its tag.
            assert re.fullmatch(r"imagesearch-model:[\w.-]+", stage.base), stage.base
        else:
            repository, _, tag = stage.base.rpartition(":")
            assert repository, f"{stage.base}: no tag"
            # A full version, not a moving alias such as latest, 3 or 3.11-slim.
            assert re.match(r"\d+\.\d+\.\d+-", tag), f"{stage.base}: not a pinned version tag"
        if stage.name:
            aliases.add(stage.name)


@pytest.mark.parametrize("name", SERVING)
def test_serving_images_install_exactly_their_extra(name: str) -> None:
    extra = SERVING[name][0]
    assert extra in PYPROJECT["project"]["optional-dependencies"]
    assert extra in makefile_extras()
    *builders, runtime = parse(name)
    installs = [args for stage in builders for args in pip(stage, "install")]
    uninstalls = {a for stage in builders for args in pip(stage, "uninstall") for a in args}
    assert installs[0] == [f".[{extra}]"], f"{name} installs {installs[0]}"
    if name == "extractor-gpu":
        # The extra's onnxruntime, swapped for its CUDA build: the same requirement.
        [[gpu]] = installs[1:]
        wanted = next(
            Requirement(r)
            for r in PYPROJECT["project"]["optional-dependencies"][extra]
            if Requirement(r).name == "onnxruntime"
        )
        requirement = Requirement(gpu)
        assert requirement.name == "onnxruntime-gpu"
        [pin] = requirement.specifier
        assert pin.operator == "=="
        assert Version(pin.version) in wanted.specifier, f"{gpu} does not satisfy {wanted}"
        assert uninstalls == {"onnxruntime", "pip", "setuptools"}
    else:
        assert len(installs) == 1
        assert uninstalls == {"pip", "setuptools"}
    # The runtime stage installs nothing: it copies the built environment.
    assert not pip(runtime, "install")
    assert any(c.startswith("--from=build /opt/venv ") for c in runtime.all("COPY"))


@pytest.mark.parametrize("name", SERVING)
def test_no_torch_and_no_compilers_in_serving_images(name: str) -> None:
    *builders, runtime = parse(name)
    # Whatever the image installs, by pyproject.toml's word: the base and its extras.
    declared = [*PYPROJECT["project"]["dependencies"]]
    for stage in builders:
        for args in pip(stage, "install"):
            for argument in args:
                if argument.startswith(".["):
                    for extra in extras_of(argument):
                        declared += PYPROJECT["project"]["optional-dependencies"][extra]
                else:
                    declared.append(argument)
    assert "torch" not in {Requirement(r).name for r in declared}
    text = "\n".join(logical_lines((DOCKER / f"{name}.Dockerfile").read_text()))
    assert "torch" not in text
    for words in shell_commands(runtime):
        if words[:2] == ["apt-get", "install"]:
            packages = {w for w in words[2:] if not w.startswith("-")}
            assert packages <= {"python3.12"}, f"{name} runtime installs {packages}"


def test_model_image_exports_with_the_export_extra() -> None:
    export, model = parse("model")
    [args] = pip(export, "install")
    assert "export" in extras_of(args[-1])
    assert extras_of(args[-1]) <= makefile_extras()
    # The same command as `make model`, with a model it knows.
    commands = [
        w
        for w in shell_commands(export)
        if w[:3] == ["/opt/venv/bin/python", "-m", "extractor_service.export"]
    ]
    assert len(commands) == 1
    assert export.args["MODEL"] in {"auto", "vgg16", "efficientnet-lite0"}
    # The model image holds the model directory and nothing else.
    assert model.base == "scratch"
    assert model.all("COPY") == ["--from=export /out/ /"]
    assert "--out /out" in " ".join(commands[0])


@pytest.mark.parametrize("name", SERVING)
def test_python_satisfies_requires_python(name: str) -> None:
    runtime = parse(name)[-1]
    match = re.match(r"python:(\d+\.\d+\.\d+)-", runtime.base.split("/")[-1])
    if match:
        version = match.group(1)
    else:
        [python] = {
            w for words in shell_commands(runtime) for w in words if w.startswith("python3.")
        }
        version = python.removeprefix("python")
    assert Version(version) in SpecifierSet(PYPROJECT["project"]["requires-python"])


@pytest.mark.parametrize("name", SERVING)
def test_runtime_runs_unprivileged_with_a_shell_free_healthcheck(name: str) -> None:
    _, settings_type, prefix = SERVING[name]
    runtime = parse(name)[-1]
    [user] = runtime.all("USER")
    uid, gid = (int(part) for part in user.split(":"))
    # Numeric and unprivileged, so that the kubelet's runAsNonRoot check can tell.
    assert uid >= 1000, user
    assert gid >= 1000, user
    assert runtime.instructions[-1][0] == "ENTRYPOINT"
    [healthcheck] = runtime.all("HEALTHCHECK")
    options, _, command = healthcheck.partition(" CMD ")
    assert "--timeout=" in options
    assert "--start-period=" in options
    words = exec_form(command)
    assert words == ["/opt/venv/bin/python", "/opt/imagesearch/healthcheck.py", f"{prefix}PORT"]
    assert "--from=build /opt/venv /opt/venv" in runtime.all("COPY")
    assert "deploy/docker/healthcheck.py /opt/imagesearch/healthcheck.py" in runtime.all("COPY")
    # The console script pyproject.toml declares for this server.
    [entrypoint] = runtime.all("ENTRYPOINT")
    [executable] = exec_form(entrypoint)
    script = executable.removeprefix("/opt/venv/bin/")
    module = settings_type.__module__.split(".")[0]
    assert PYPROJECT["project"]["scripts"][script] == f"{module}.__main__:main"


@pytest.mark.parametrize("name", SERVING)
def test_image_environment_holds_real_settings(name: str) -> None:
    _, settings_type, prefix = SERVING[name]
    runtime = parse(name)[-1]
    variables = env(runtime)
    settings = {k: v for k, v in variables.items() if k.startswith(prefix)}
    fields = {prefix + f.name.upper() for f in dataclasses.fields(settings_type)}
    assert set(settings) <= fields, sorted(set(settings) - fields)
    loaded = load_settings(settings_type, prefix=prefix, environ=settings, argv=[])
    assert loaded.host == "0.0.0.0"
    assert runtime.all("EXPOSE") == [f"{loaded.port} {loaded.metrics_port}"]
    # The ConfigMap agrees with the image where both say something.
    service = settings_type.__module__.split("_")[0]
    config_map = env_file(DEPLOY / "k8s" / "base" / f"{service}.env")
    for key in settings.keys() & config_map.keys():
        if key != f"{prefix}PROVIDERS":
            assert settings[key] == config_map[key], key
    assert variables["PATH"].startswith("/opt/venv/bin:")


@pytest.mark.parametrize("name", ["extractor", "extractor-gpu"])
def test_extractor_images_carry_the_model_where_the_settings_look(name: str) -> None:
    stages = parse(name)
    assert stages[0].name == "model"
    runtime = stages[-1]
    assert f"--from=model / {MODEL_DIR}/" in runtime.all("COPY")
    assert env(runtime)[f"{EXTRACTOR_PREFIX}MODEL_DIR"] == MODEL_DIR
    config_map = env_file(DEPLOY / "k8s" / "base" / "extractor.env")
    assert config_map[f"{EXTRACTOR_PREFIX}MODEL_DIR"] == MODEL_DIR


def test_gpu_image_names_providers_it_has() -> None:
    variables = env(parse("extractor-gpu")[-1])
    settings = load_settings(ExtractorSettings, prefix=EXTRACTOR_PREFIX, environ=variables, argv=[])
    assert settings.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")


@pytest.mark.parametrize("service", ["extractor", "search"])
def test_config_map_sources_hold_only_real_settings(service: str) -> None:
    prefix = {"extractor": EXTRACTOR_PREFIX, "search": SEARCH_PREFIX}[service]
    settings_type = SETTINGS[prefix]
    values = env_file(DEPLOY / "k8s" / "base" / f"{service}.env")
    fields = {prefix + f.name.upper() for f in dataclasses.fields(settings_type)}
    assert set(values) <= fields, sorted(set(values) - fields)
    load_settings(settings_type, prefix=prefix, environ=values, argv=[])


def ignore_pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regular expression."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def included(rules: list[tuple[bool, re.Pattern[str]]], path: str) -> bool:
    """Whether the build context holds ``path``: the last rule matching it or a parent wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    keep = True
    for exception, regex in rules:
        if any(regex.fullmatch(c) for c in candidates):
            keep = exception
    return keep


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_build_context_holds_the_sources_and_nothing_else(name: str) -> None:
    ignore = DOCKER / f"{name}.Dockerfile.dockerignore"
    rules = []
    for line in ignore.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            exception = line.startswith("!")
            rules.append((exception, ignore_pattern(line.removeprefix("!").strip("/"))))
    # Every file the distribution is built from (pyproject's packages, readme) is there.
    wanted = [
        "pyproject.toml",
        PYPROJECT["project"]["readme"],
        "constraints.txt",
        "deploy/docker/healthcheck.py",
    ]
    for package in PACKAGES[name]:
        assert any(
            package.startswith(p.rstrip("*"))
            for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
        )
        wanted += [
            str(p.relative_to(ROOT))
            for p in (ROOT / package).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        ]
    missing = [path for path in wanted if not included(rules, path)]
    assert not missing, f"{name}: the build context lacks {missing[:5]}"
    # Every other package of the repository stays out, so the image cannot install it.
    for package in TOP_LEVEL_PACKAGES - PACKAGES[name]:
        assert not included(rules, f"{package}/__init__.py"), f"{name}: the context holds {package}"
    for path in (
        ".venv/bin/python",
        ".git/config",
        ".data/postgres/PG_VERSION",
        "models/default/model.onnx",
        "tests/conftest.py",
        "devenv/run.py",
        "service_core/__pycache__/config.cpython-311.pyc",
        "vgg16-397923af.pth",
    ):
        assert not included(rules, path), f"{name}: the build context holds {path}"
    assert included(rules, "deploy/docker/weights/vgg16-397923af.pth") == (name == "model")
    # What the Dockerfile copies from the context is in it.
    for stage in parse(name):
        for copy in stage.all("COPY"):
            if not copy.startswith("--from="):
                source = copy.split()[0]
                assert source == "." or included(rules, source), f"{name}: COPY {source}"


def write_model(directory: Path, onnx: bytes) -> None:
    import hashlib

    (directory / "model.onnx").write_bytes(onnx)
    manifest = Manifest(
        name="vgg16",
        version=make_version("fc7", "fp32", "0" * 64),
        layer="fc7",
        dimension=4096,
        input_size=224,
        resize_size=256,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        precision="fp32",
        input_name="images",
        output_name="embeddings",
        onnx_file="model.onnx",
        onnx_sha256=hashlib.sha256(onnx).hexdigest(),
        weights_source="test",
        opset=18,
    )
    write_manifest(directory, manifest)


def build_checks(name: str) -> list[str]:
    """The Python programs the runtime stage runs at build time (exec-form RUN)."""
    programs = []
    for run in parse(name)[-1].all("RUN"):
        if run.startswith("["):
            words = exec_form(run)
            assert words[:2] == ["/opt/venv/bin/python", "-c"]
            programs.append(words[2])
    assert programs, f"{name}: no build-time check"
    return programs


def test_extractor_build_check_verifies_the_model(tmp_path: Path) -> None:
    [program] = build_checks("extractor")
    program = program.replace(MODEL_DIR, str(tmp_path))
    write_model(tmp_path, b"an onnx graph")
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "sha256 verified" in done.stdout
    (tmp_path / "model.onnx").write_bytes(b"an onnx graph, changed after export")
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode != 0
    assert "sha256 mismatch" in done.stderr


def test_gpu_build_check_compiles() -> None:
    for program in build_checks("extractor-gpu"):
        compile(program, "extractor-gpu.Dockerfile", "exec")
        assert MODEL_DIR in program
        assert "CUDAExecutionProvider" in program


def test_search_build_check_finds_the_migrations() -> None:
    [program] = build_checks("search")
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "migrations packaged" in done.stdout


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_images_install_the_project_at_the_locked_versions(name: str) -> None:
    project_installs = [
        words
        for stage in parse(name)[:-1]
        for words in shell_commands(stage)
        if words[0].endswith("/pip")
        and words[1] == "install"
        and any(w.startswith(".[") for w in words)
    ]
    assert project_installs, f"{name} does not install the project"
    for words in project_installs:
        assert "--constraint=constraints.txt" in words, f"{name}: {shlex.join(words)}"


@pytest.mark.parametrize("name", SERVING)
def test_serving_images_drop_the_other_roles_console_scripts(name: str) -> None:
    role = SERVING[name][0]
    removed = {
        word.removeprefix("/opt/venv/bin/")
        for stage in parse(name)[:-1]
        for words in shell_commands(stage)
        if words[0] == "rm"
        for word in words[1:]
    }
    scripts = set(PYPROJECT["project"]["scripts"])
    kept = scripts - removed
    assert kept == {f"imagesearch-{role}"}, f"{name} keeps {kept}"
    [entry] = [PYPROJECT["project"]["scripts"][script] for script in kept]
    assert entry.split(".")[0] in PACKAGES[name]


def test_constraints_pin_every_requirement_of_every_extra() -> None:
    """constraints.txt (make lock) holds one exact version of each requirement that the
    images, CI or `make setup` install, and that version satisfies pyproject.toml."""
    pins: dict[str, Version] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            pinned = Requirement(line)
            [spec] = pinned.specifier
            assert spec.operator == "==", line
            pins[canonical(pinned.name)] = Version(spec.version)
    project = PYPROJECT["project"]
    declared = [*project["dependencies"]]
    for extra in (*makefile_extras(), "bench"):
        declared += project["optional-dependencies"][extra]
    for requirement in map(Requirement, declared):
        name = canonical(requirement.name)
        assert name in pins, f"constraints.txt does not pin {name}: run make lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name} {pins[name]}, outside {requirement}: run make lock"
        )


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
