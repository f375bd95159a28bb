"""The Kubernetes install steps of the README and docs/operations.md, followed in order.

A platform team pastes these blocks into one shell at the repository's root. Two ways
they broke: a block that changed into an overlay's directory (`cd ...`) to point
kustomize at the pushed image, then applied `deploy/kubernetes/...` relative to that
directory, which does not exist there; and the README's block, which pushed the image
to a registry and applied the overlay without pointing it at that image, so the pods
asked for `aigw-extproc:0.1.0`, a name only the build machine has. The steps run here
on a copy of deploy/: `cd`, `(cd DIR && ...)`, `kustomize edit set image` (as kustomize
writes it) and `kubectl apply -k DIR` (built with `kubectl kustomize`) are played, and
every other line is left alone.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

PAGES = [Path("README.md"), Path("docs/operations.md")]
FENCE = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)
# The image `docker build -t aigw-extproc:0.1.0 .` makes, as the base names it.
LOCAL_IMAGE = "aigw-extproc:0.1.0"


def install_blocks() -> list[tuple[str, str]]:
    """(page, block) of every shell block that applies a kustomization."""
    return [
        (str(page), block)
        for page in PAGES
        for block in FENCE.findall(page.read_text(encoding="utf-8"))
        if "kubectl apply -k" in block
    ]


@dataclass
class Shell:
    """What the lines of a block do to the working directory and the kustomizations."""

    root: Path
    cwd: Path
    pushed: list[str] = field(default_factory=list)
    applied: list[tuple[str, list[str]]] = field(default_factory=list)

    def run(self, line: str) -> None:
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if line.startswith("(") and line.endswith(")"):  # a subshell: its `cd` stays there
            Shell(self.root, self.cwd, self.pushed, self.applied).run(line[1:-1])
            return
        for command in re.split(r"\s*&&\s*", line):
            self.command(shlex.split(command))

    def command(self, words: list[str]) -> None:
        if not words:
            return
        if words[0] == "cd":
            target = self.cwd / words[1]
            assert target.is_dir(), f"`cd {words[1]}`: no such directory from {self.where}"
            self.cwd = target
        elif words[:2] == ["docker", "push"]:
            self.pushed.append(words[2])
        elif words[:4] == ["kustomize", "edit", "set", "image"]:
            self.set_image(words[4])
        elif words[:3] == ["kubectl", "apply", "-k"]:
            target = self.cwd / words[3]
            assert target.is_dir(), (
                f"`kubectl apply -k {words[3]}`: no such directory from {self.where}"
            )
            self.applied.append((words[3], gateway_images(target)))

    @property
    def where(self) -> str:
        return "/" + str(self.cwd.relative_to(self.root)).removeprefix(".")

    def set_image(self, assignment: str) -> None:
        """What `kustomize edit set image NAME=NEWNAME:TAG` writes into kustomization.yaml."""
        name, _, reference = assignment.partition("=")
        new_name, _, tag = reference.rpartition(":")
        path = self.cwd / "kustomization.yaml"
        kustomization: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
        images = [image for image in kustomization.get("images", []) if image["name"] != name]
        kustomization["images"] = [*images, {"name": name, "newName": new_name, "newTag": tag}]
        path.write_text(yaml.safe_dump(kustomization, sort_keys=False), encoding="utf-8")


def gateway_images(directory: Path) -> list[str]:
    """The images of the gateway's containers in a kustomization's build."""
    binary = shutil.which("kubectl")
    assert binary, "kubectl is needed (apt-get install kubectl; .ci/run does)"
    built = subprocess.run(
        [binary, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert built.returncode == 0, built.stderr
    return [
        container["image"]
        for manifest in yaml.safe_load_all(built.stdout)
        if manifest and manifest["kind"] == "Deployment"
        for container in manifest["spec"]["template"]["spec"]["containers"]
        if container["name"] == "gateway"
    ]


def follow(block: str, root: Path) -> Shell:
    shutil.copytree("deploy", root / "deploy")
    shell = Shell(root, root)
    for line in re.sub(r"\\\n\s*", " ", block).splitlines():
        shell.run(line.strip())
    return shell


def test_the_docs_show_install_steps_with_an_image_push() -> None:
    pages = {page for page, block in install_blocks() if "docker push" in block}
    assert pages == {str(page) for page in PAGES}


@pytest.mark.parametrize(
    ("page", "block"), install_blocks(), ids=[page for page, _ in install_blocks()]
)
def test_install_steps_pasted_in_one_shell_apply_the_image_they_pushed(
    page: str, block: str, tmp_path: Path
) -> None:
    """Each `kubectl apply -k` finds its directory from where the lines before left the
    shell, and the gateway's pods run the image the block pushed (with no push in the
    block, at least not the name only the build machine has)."""
    shell = follow(block, tmp_path)
    assert any(images for _, images in shell.applied), page
    for directory, images in shell.applied:
        for image in images:
            assert image != LOCAL_IMAGE, f"{page}: {directory} runs the unpushed {image}"
            if shell.pushed:
                assert image in shell.pushed, f"{page}: {directory} runs {image}, not pushed"


def test_a_block_that_stays_in_the_overlay_fails_the_check(tmp_path: Path) -> None:
    block = (
        "cd deploy/kubernetes/overlays/in-cluster-valkey\n"
        "kubectl apply -k deploy/kubernetes/overlays/in-cluster-valkey\n"
    )
    with pytest.raises(AssertionError, match="no such directory from /deploy/kubernetes"):
        follow(block, tmp_path)


def test_setting_the_image_as_kustomize_does_changes_the_pods_image(tmp_path: Path) -> None:
    block = (
        "(cd deploy/kubernetes/overlays/external-redis && "
        "kustomize edit set image aigw-extproc=registry.example.com/team/aigw-extproc:1.2.3)\n"
        "kubectl apply -k deploy/kubernetes/overlays/external-redis\n"
        "kubectl apply -k deploy/kubernetes/overlays/in-cluster-valkey\n"
    )
    shell = follow(block, tmp_path)
    assert shell.applied == [
        (
            "deploy/kubernetes/overlays/external-redis",
            ["registry.example.com/team/aigw-extproc:1.2.3"],
        ),
        ("deploy/kubernetes/overlays/in-cluster-valkey", [LOCAL_IMAGE]),
    ]
