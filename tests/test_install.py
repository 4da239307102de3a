"""README's install commands resolve on a student's laptop: pip's own resolver, in a dry run against the package
index, for macOS on ARM64, Windows on x86-64 and Linux on x86-64, and the tour's Linux install pulls no CUDA.

``pip install --platform`` picks wheels for another platform, but pip evaluates environment markers
(``platform_system == 'Linux'``) against the machine it runs on; each resolution here runs pip with the marker
environment of the platform it resolves for, so that torch's Linux-only CUDA requirements and triton's marker
are judged as they would be there. Only the package index is asked: this machine's pip configuration (local
wheel folders, constraints) is set aside.
"""
import json
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHON = "3.12"
PLATFORMS = {  # pip's platform tag and the marker environment of a machine of that kind
    "macOS arm64": (["macosx_14_0_arm64"], {"sys_platform": "darwin", "platform_system": "Darwin",
                                          "platform_machine": "arm64", "os_name": "posix"}),
    "Windows amd64": (["win_amd64"], {"sys_platform": "win32", "platform_system": "Windows",
                                    "platform_machine": "AMD64", "os_name": "nt"}),
    "Linux x86_64": ([f"manylinux_2_{v}_x86_64" for v in range(28, 16, -1)] + ["manylinux2014_x86_64"],
                     {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                      "os_name": "posix"}),
}
# pip, with the marker environment of another machine (given as JSON in argv[1])
PIP_AS = """import json, sys
import pip._vendor.packaging.markers as markers
env = {**markers.default_environment(), **json.loads(sys.argv[1])}
markers.default_environment = lambda: dict(env)
from pip._internal.cli.main import main
sys.exit(main(sys.argv[2:]))
"""
OFFLINE = ("NewConnectionError", "Failed to establish a new connection", "Temporary failure in name resolution",
           "Network is unreachable")


def readme_installs() -> list:
    """Every ``pip install`` that README tells a reader to run (in a code block or inline), as its arguments;
    those that name another index (torch's CPU build) are not the package index's to resolve."""
    text = (ROOT / "README.md").read_text()
    commands = re.findall(r"pip install ([^`&\n]+)", text)
    return [shlex.split(c) for c in dict.fromkeys(c.strip() for c in commands) if "--index-url" not in c]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The project built once, so that each resolution reads its metadata instead of building it again."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True, timeout=600)
    return next(out.glob("minialign-*.whl"))


def on_wheel(args: list, wheel: Path) -> list:
    """README's arguments with the project (``-e .``, ``-e '.[test]'``) replaced by its built wheel."""
    out = []
    for a in args:
        if a == "-e":
            continue
        out.append(str(wheel) + a[1:] if a.startswith(".") else a)
    return out


def resolve(args: list, platform: str) -> subprocess.CompletedProcess:
    tags, markers = PLATFORMS[platform]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k == "PIP_CERT"}
    env["PIP_CONFIG_FILE"] = os.devnull
    markers = {**markers, "python_version": PYTHON, "python_full_version": f"{PYTHON}.0"}
    cmd = [sys.executable, "-c", PIP_AS, json.dumps(markers), "install", "--dry-run", "--ignore-installed",
           "--quiet", "--report", "-", *[f"--platform={t}" for t in tags], "--python-version", PYTHON,
           "--only-binary=:all:", "--disable-pip-version-check", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def installed_names(result) -> list:
    return [item["metadata"]["name"].lower() for item in json.loads(result.stdout)["install"]]


def test_readme_tells_the_tour_install_without_torch_or_triton():
    installs = readme_installs()
    tour = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)[0]
    assert "pip install -e . &&" in tour and tour.strip().endswith("minialign tour")
    assert ["-e", "."] in installs


def together(installs: list) -> list:
    """README's installs as one: their requirements and the union of the project's extras (a set of extras that
    resolves together resolves one by one, and one resolution per platform is quicker than five)."""
    args, extras = [], []
    for install in installs:
        for a in install:
            if a.startswith("."):
                extras += re.findall(r"[a-z]+", a[1:])
            elif a != "-e" and a not in args:
                args.append(a)
    return args + ["-e", ".[" + ",".join(dict.fromkeys(extras)) + "]"]


def test_readme_install_commands_resolve_on_macos_windows_and_linux_and_the_tour_pulls_no_cuda(wheel):
    installs = readme_installs()
    jobs = [(args, platform) for args in (["-e", "."], together(installs)) for platform in PLATFORMS]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda job: resolve(on_wheel(job[0], wheel), job[1]), jobs))
    failures, cuda = [], {}
    for (args, platform), result in zip(jobs, results):
        if result.returncode != 0:
            if any(s in result.stderr for s in OFFLINE) and not os.environ.get("CI"):
                pytest.skip("the package index cannot be reached (CI must reach it)")
            failures.append(f"pip install {shlex.join(args)} on {platform}:\n{result.stderr.strip()[-1500:]}")
        elif platform.startswith("Linux"):
            cuda[args == ["-e", "."]] = [n for n in installed_names(result) if n.startswith(("nvidia-", "cuda-"))]
    assert not failures, "\n\n".join(failures)
    assert not cuda[True], f"the tour's Linux install would pull CUDA packages: {cuda[True]}"
    # the check sees CUDA where it is: the index's torch for Linux, in the test command, brings it
    assert cuda[False], "the Linux test install resolved no CUDA package: is torch's Linux wheel read right?"
