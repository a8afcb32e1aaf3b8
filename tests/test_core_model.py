"""create_model: shapes of every built-in architecture, errors, and the pretrained-weights failure."""

import subprocess
import sys
import urllib.error

import pytest
import torch

from spml.model import ARCHITECTURES, LinearCAMModel, ModelOutput, create_model, register_architecture


@pytest.mark.parametrize("arch,options,size,dim,grid", [
    ("compact", {"width": 8}, 32, 64, 2),  # output stride 16, 8 * width channels
    ("compact", {"width": 8}, 48, 64, 3),
    ("resnet18", {}, 64, 512, 2),  # output stride 32
    ("resnet50", {}, 64, 2048, 2),
])
def test_create_model_shapes(arch, options, size, dim, grid, any_device):
    torch.manual_seed(0)
    model = create_model(arch, 4, **options).eval().to(any_device)
    assert model.arch == arch and model.num_classes == 4
    with torch.no_grad():
        output = model(torch.randn(2, 3, size, size, device=any_device))
    assert isinstance(output, ModelOutput)
    assert output.logits.shape == (2, 4)
    assert output.features.shape == (2, dim, grid, grid)
    assert output.attention is None


def test_arch_config_rebuilds_the_same_architecture():
    model = create_model("compact", 3, width=8)
    config = model.arch_config()
    assert config == {"arch": "compact", "num_classes": 3, "width": 8}
    rebuilt = create_model(config.pop("arch"), config.pop("num_classes"), **config)
    rebuilt.load_state_dict(model.state_dict(), strict=True)


def test_parameter_groups_split_backbone_and_head():
    model = create_model("compact", 3, width=8)
    backbone, head = model.parameter_groups()
    assert {id(p) for p in head} == {id(model.head.weight), id(model.head.bias)}
    assert {id(p) for p in backbone} | {id(p) for p in head} == {id(p) for p in model.parameters()}
    assert not {id(p) for p in backbone} & {id(p) for p in head}


def test_unknown_architecture_and_bad_options():
    with pytest.raises(ValueError, match="unknown architecture 'vgg99'") as info:
        create_model("vgg99", 3)
    assert "resnet50" in str(info.value) and "compact" in str(info.value)
    with pytest.raises(ValueError, match="num_classes"):
        create_model("compact", 0)
    with pytest.raises(ValueError, match="no-pretrained"):
        create_model("compact", 3, pretrained=True)
    assert {"compact", "resnet18", "resnet50"} <= set(ARCHITECTURES)


def test_an_architecture_registers_itself_where_it_is_defined(monkeypatch):
    monkeypatch.setitem(ARCHITECTURES, "tiny-test", None)  # removed again after the test

    @register_architecture("tiny-test")
    def build(num_classes: int, pretrained: bool = False) -> LinearCAMModel:
        return LinearCAMModel("tiny-test", torch.nn.Conv2d(3, 4, 3), 4, num_classes)

    assert ARCHITECTURES["tiny-test"] is build
    assert create_model("tiny-test", 2).arch_config() == {"arch": "tiny-test", "num_classes": 2}
    with pytest.raises(ValueError, match="unknown architecture 'vgg99'") as info:
        create_model("vgg99", 3)
    assert "tiny-test" in str(info.value)


def test_importing_the_model_module_alone_registers_every_architecture():
    code = "import spml.model; print(' '.join(spml.model.ARCHITECTURES))"
    names = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert names == list(ARCHITECTURES)
    assert {"compact", "resnet18", "resnet34", "resnet50", "resnet101", "q2l"} <= set(names)


def test_pretrained_weights_that_cannot_be_downloaded_give_a_clear_error(tmp_path, monkeypatch):
    # torchvision downloads through torch.hub; HF_HUB_OFFLINE does not stop it, so the download is cut here.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: nothing to fall back on
    attempts = []

    def refuse(url, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    with pytest.raises(RuntimeError) as info:
        create_model("resnet18", 3, pretrained=True)
    message = str(info.value)
    assert "resnet18" in message and "--no-pretrained" in message and "URLError" in message
    assert attempts and attempts[0].endswith(".pth")
    assert not list(tmp_path.rglob("*.pth"))
