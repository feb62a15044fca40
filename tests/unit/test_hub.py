"""animzoo.hub: safetensors + JSON pretrained folders, the named table, Lightning checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from animate_doubles import NAME, CentroidShift, blobs, registered
from safetensors.torch import load_file, save_file

import animzoo
from animzoo import hub
from animzoo.weights import sha256_of
from animzoo.errors import AnimzooInputError
from animzoo.methods.baselines import SourceCopy


@pytest.fixture(autouse=True, scope="module")
def _register_double():
    with registered(CentroidShift, NAME):
        yield


def _module(**kwargs) -> CentroidShift:
    torch.manual_seed(0)
    module = CentroidShift(mix=0.5, **kwargs)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.5)  # not the initialisation: loading must matter
    return module.eval()


def _batch() -> dict:
    src = torch.from_numpy(blobs()).permute(2, 0, 1)[None].float() / 255
    g = torch.Generator().manual_seed(1)
    return {"source": src.repeat(2, 1, 1, 1), "driving": torch.rand(2, 3, 32, 32, generator=g)}


def _plain(value) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def test_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    module = _module()
    hub.save_pretrained(module, tmp_path / "pre", image_size=32, recipe="r.yaml", metrics={"l1": 0.1})
    loaded = hub.from_pretrained(tmp_path / "pre")
    assert type(loaded) is CentroidShift and not loaded.training
    assert loaded.mix == 0.5 and loaded.animzoo_config["image_size"] == 32
    batch = _batch()
    with torch.no_grad():
        expected = module.animate(batch)["prediction"]
        actual = loaded.animate(batch)["prediction"]
        fresh = CentroidShift(mix=0.5).eval().animate(batch)["prediction"]
    assert torch.equal(expected, actual)
    assert not torch.allclose(fresh, expected)  # the weights, not the defaults, made the output
    # the tied weight is still one tensor after loading
    assert loaded.tied.weight.data_ptr() == loaded.head.weight.data_ptr()
    for key, value in module.state_dict().items():
        if not key.startswith("discriminator."):
            assert torch.equal(value, loaded.state_dict()[key]), key


def test_config_is_plain_json_and_no_pickle(tmp_path: Path) -> None:
    out = hub.save_pretrained(_module(), tmp_path / "pre", data={"name": "blobs", "size": 32})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    for path in out.iterdir():
        head = path.read_bytes()[:2]
        assert head[:1] != b"\x80" and not path.read_bytes().startswith(b"PK")  # pickle / torch zip
    config = json.loads((out / "config.json").read_text())
    assert _plain(config)
    assert config["method"] == "test_centroid_shift"
    assert config["class_path"].endswith("CentroidShift")
    assert config["animzoo_version"] == animzoo.__version__
    assert config["requires"] == [] and config["image_size"] == 32
    assert config["init_args"]["mix"] == 0.5 and config["init_args"]["width"] == 4
    for key in ("optimizer", "discriminator_optimizer", "scheduler", "discriminator_scheduler"):
        assert key not in config["init_args"]
    keys = set(load_file(out / "model.safetensors"))
    assert not any(k.startswith("discriminator.") for k in keys)
    assert "proj.weight" in keys and "offset" in keys


def test_discriminator_saved_only_when_asked(tmp_path: Path) -> None:
    module = _module()
    hub.save_pretrained(module, tmp_path / "with", include_discriminator=True)
    assert any(k.startswith("discriminator.") for k in load_file(tmp_path / "with" / "model.safetensors"))
    loaded = hub.from_pretrained(tmp_path / "with")
    assert torch.equal(loaded.discriminator[0].weight, module.discriminator[0].weight)


def test_optimizer_callables_are_not_saved(tmp_path: Path) -> None:
    def sgd(params):
        return torch.optim.SGD(params, lr=0.1)

    module = CentroidShift(optimizer=sgd, scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1))
    hub.save_pretrained(module, tmp_path / "pre")
    config = json.loads((tmp_path / "pre" / "config.json").read_text())
    assert "optimizer" not in config["init_args"] and "scheduler" not in config["init_args"]
    hub.from_pretrained(tmp_path / "pre")


def test_unknown_method_lists_valid_ones(tmp_path: Path) -> None:
    out = hub.save_pretrained(_module(), tmp_path / "pre")
    config = json.loads((out / "config.json").read_text())
    config["method"] = "no_such_method"
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(hub.PretrainedError, match="unknown method 'no_such_method'.*source_copy") as err:
        hub.from_pretrained(out)
    assert "config.json" in str(err.value)


def test_mismatched_shapes_name_the_key(tmp_path: Path) -> None:
    out = hub.save_pretrained(_module(), tmp_path / "pre")
    config = json.loads((out / "config.json").read_text())
    config["init_args"]["width"] = 8
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(hub.PretrainedMismatchError, match=r"proj\.weight: file \(4, 3, 1, 1\) vs model \(8, 3, 1, 1\)"):
        hub.from_pretrained(out)


def test_missing_and_unexpected_keys(tmp_path: Path) -> None:
    out = hub.save_pretrained(_module(), tmp_path / "pre")
    state = load_file(out / "model.safetensors")
    state.pop("gain")
    state["extra.weight"] = torch.zeros(2)
    save_file(state, out / "model.safetensors")
    with pytest.raises(hub.PretrainedMismatchError, match=r"missing key\(s\): gain.*unexpected key\(s\): extra\.weight"):
        hub.from_pretrained(out)


def test_bad_init_args_and_missing_files(tmp_path: Path) -> None:
    out = hub.save_pretrained(_module(), tmp_path / "pre")
    config = json.loads((out / "config.json").read_text())
    config["init_args"]["no_such_arg"] = 1
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(hub.PretrainedError, match="no_such_arg"):
        hub.from_pretrained(out)
    (out / "config.json").write_text("{not json")
    with pytest.raises(hub.PretrainedError, match="not valid JSON"):
        hub.from_pretrained(out)
    (out / "config.json").unlink()
    with pytest.raises(hub.PretrainedNotFoundError, match="config.json: missing"):
        hub.from_pretrained(out)
    with pytest.raises(hub.PretrainedNotFoundError, match="neither a folder nor a named pretrained model.*monkeynet.synthetic64"):
        hub.from_pretrained(tmp_path / "nowhere")
    hub.save_pretrained(_module(), tmp_path / "again")
    (tmp_path / "again" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(hub.PretrainedError, match="cannot be read as safetensors"):
        hub.from_pretrained(tmp_path / "again")
    assert issubclass(hub.PretrainedError, AnimzooInputError)


def test_unregistered_class_is_refused(tmp_path: Path) -> None:
    class Unregistered(CentroidShift):
        pass

    with pytest.raises(hub.PretrainedError, match="not a registered method.*register_method"):
        hub.save_pretrained(Unregistered(), tmp_path / "pre")


# ------------------------------------------------------------------ the named table


def _entry(files: str, sha256: str | None) -> hub.PretrainedEntry:
    return hub.PretrainedEntry(
        name="test.blobs32", method="test_centroid_shift", files=files, sha256=sha256,
        recipe="none", licence="MIT", data="blobs", image_size=32,
    )


def test_load_pretrained_verifies_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = hub.save_pretrained(_module(), tmp_path / "blobs32")
    good = sha256_of(out / "model.safetensors")
    monkeypatch.setitem(hub.PRETRAINED, "test.blobs32", _entry(str(out), good))
    loaded = animzoo.load_pretrained("test.blobs32")
    assert isinstance(loaded, CentroidShift) and loaded.animzoo_config["pretrained_name"] == "test.blobs32"
    # tamper with the weights: refused, with both hashes in the message
    state = load_file(out / "model.safetensors")
    state["gain"] = state["gain"] + 1
    save_file(state, out / "model.safetensors")
    bad = sha256_of(out / "model.safetensors")
    with pytest.raises(hub.PretrainedChecksumError) as err:
        hub.load_pretrained("test.blobs32")
    assert good in str(err.value) and bad in str(err.value)
    # from_pretrained with the name goes through the same check
    with pytest.raises(hub.PretrainedChecksumError):
        hub.from_pretrained("test.blobs32")


def test_index_json_holds_the_sha(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "PRETRAINED_DIR", tmp_path)
    monkeypatch.setitem(hub.PRETRAINED, "test.blobs32", _entry("blobs32", None))
    hub.save_pretrained(_module(), tmp_path / "blobs32")
    with pytest.raises(hub.PretrainedChecksumError, match="records no sha256"):
        hub.load_pretrained("test.blobs32")
    index = hub.write_pretrained_index(tmp_path, table={"test.blobs32": hub.PRETRAINED["test.blobs32"]})
    recorded = json.loads(index.read_text())["models"]["test.blobs32"]
    assert recorded["sha256"] == sha256_of(tmp_path / "blobs32" / "model.safetensors")
    assert hub.get_pretrained_entry("test.blobs32").sha256 == recorded["sha256"]
    assert isinstance(hub.load_pretrained("test.blobs32"), CentroidShift)


def test_index_refuses_a_folder_of_another_method(tmp_path: Path) -> None:
    hub.save_pretrained(SourceCopy(), tmp_path / "blobs32")
    with pytest.raises(hub.PretrainedError, match="'source_copy' but the entry 'test.blobs32'"):
        hub.write_pretrained_index(tmp_path, table={"test.blobs32": _entry("blobs32", None)})


def test_unknown_name_lists_names() -> None:
    with pytest.raises(hub.PretrainedNotFoundError, match="unknown pretrained model 'nope'.*monkeynet.synthetic64"):
        hub.load_pretrained("nope")


def test_shipped_monkeynet_entry() -> None:
    """Loads when the weights are shipped; otherwise a clear error with the command that makes them."""
    entry = hub.PRETRAINED["monkeynet.synthetic64"]
    folder = hub.PRETRAINED_DIR / entry.files
    if (folder / "model.safetensors").is_file():
        module = hub.load_pretrained("monkeynet.synthetic64")
        assert module.animzoo_config["method"] == "monkeynet" and not module.training
    else:
        with pytest.raises(hub.PretrainedNotFoundError, match="python -m animzoo.hub export"):
            hub.load_pretrained("monkeynet.synthetic64")


def test_url_entry_downloads_only_when_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = hub.save_pretrained(_module(), tmp_path / "remote")
    monkeypatch.setenv("ANIMZOO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("ANIMZOO_ALLOW_DOWNLOAD", raising=False)
    entry = _entry(out.as_uri(), sha256_of(out / "model.safetensors"))
    monkeypatch.setitem(hub.PRETRAINED, "test.blobs32", entry)
    with pytest.raises(hub.PretrainedNotFoundError, match="ANIMZOO_ALLOW_DOWNLOAD=1"):
        hub.load_pretrained("test.blobs32")
    monkeypatch.setenv("ANIMZOO_ALLOW_DOWNLOAD", "1")
    assert isinstance(hub.load_pretrained("test.blobs32"), CentroidShift)
    assert (tmp_path / "cache" / "pretrained" / "test.blobs32" / "model.safetensors").is_file()
    # a corrupt download is refused and not kept
    monkeypatch.setenv("ANIMZOO_CACHE_DIR", str(tmp_path / "cache2"))
    monkeypatch.setitem(hub.PRETRAINED, "test.blobs32", _entry(out.as_uri(), "0" * 64))
    with pytest.raises(hub.PretrainedChecksumError, match="0000"):
        hub.load_pretrained("test.blobs32")
    assert not (tmp_path / "cache2" / "pretrained" / "test.blobs32" / "model.safetensors").exists()


# ------------------------------------------------------------------ Lightning checkpoints


def _write_ckpt(module, path: Path, class_path: bool = True) -> Path:
    hparams = dict(module.hparams)
    if class_path:  # what LightningCLI stores
        hparams["_class_path"] = f"{type(module).__module__}.{type(module).__qualname__}"
        hparams["_instantiator"] = "lightning.pytorch.cli.instantiate_module"
    torch.save(
        {"state_dict": module.state_dict(), "hyper_parameters": hparams, "epoch": 0, "global_step": 0,
         "datamodule_hyper_parameters": {"image_size": None, "synthetic": {"size": 48}}},
        path,
    )
    return path


def test_from_checkpoint(tmp_path: Path) -> None:
    module = _module()
    ckpt = _write_ckpt(module, tmp_path / "m.ckpt")
    loaded = hub.from_checkpoint(ckpt)
    batch = _batch()
    with torch.no_grad():
        assert torch.equal(module.animate(batch)["prediction"], loaded.animate(batch)["prediction"])
    assert loaded.animzoo_config["method"] == "test_centroid_shift"
    assert torch.equal(loaded.discriminator[0].weight, module.discriminator[0].weight)
    # export to a pretrained folder gives the same module
    hub.save_pretrained(loaded, tmp_path / "pre")
    assert torch.equal(hub.from_pretrained(tmp_path / "pre").proj.weight, module.proj.weight)


def test_checkpoint_of_another_method_is_refused(tmp_path: Path) -> None:
    ckpt = _write_ckpt(SourceCopy(), tmp_path / "copy.ckpt")
    with pytest.raises(hub.PretrainedError, match="checkpoint of 'source_copy', not of 'test_centroid_shift'"):
        hub.from_checkpoint(ckpt, method="test_centroid_shift")
    assert isinstance(hub.from_checkpoint(ckpt, method="source_copy"), SourceCopy)


def test_checkpoint_without_class_needs_method(tmp_path: Path) -> None:
    ckpt = _write_ckpt(_module(), tmp_path / "bare.ckpt", class_path=False)
    with pytest.raises(hub.PretrainedError, match="does not say which method"):
        hub.from_checkpoint(ckpt)
    assert isinstance(hub.from_checkpoint(ckpt, method="test_centroid_shift"), CentroidShift)
    with pytest.raises(hub.PretrainedNotFoundError, match="no such checkpoint"):
        hub.from_checkpoint(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    with pytest.raises(hub.PretrainedError, match="cannot be read"):
        hub.from_checkpoint(tmp_path / "junk.ckpt")


def test_image_size_from_checkpoint_datamodule(tmp_path: Path) -> None:
    ckpt = _write_ckpt(SourceCopy(), tmp_path / "copy.ckpt")
    assert hub.from_checkpoint(ckpt).animzoo_config["image_size"] == 48


def test_export_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    module = _module()
    ckpt = _write_ckpt(module, tmp_path / "m.ckpt")
    (tmp_path / "metrics.json").write_text(json.dumps({"test/l1": 0.05}))
    code = hub._main(["export", str(ckpt), str(tmp_path / "out"), "--method", NAME, "--recipe", "r.yaml",
                      "--metrics", str(tmp_path / "metrics.json")])
    assert code == 0, capsys.readouterr().err
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["image_size"] == 32 and config["metrics"] == {"test/l1": 0.05} and config["recipe"] == "r.yaml"
    assert torch.equal(hub.from_pretrained(tmp_path / "out").proj.weight, module.proj.weight)
    assert hub._main(["export", str(ckpt), str(tmp_path / "bad"), "--method", "source_copy"]) == 2
    assert "not of 'source_copy'" in capsys.readouterr().err


def test_module_main_list_and_index_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "animzoo.hub", "list"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "monkeynet.synthetic64" in result.stdout


def test_import_animzoo_is_light() -> None:
    code = "import sys, animzoo; assert 'torch' not in sys.modules; print(sorted(animzoo.__all__))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    for name in ("Animator", "list_methods", "get_method", "load_pretrained"):
        assert name in result.stdout
    assert animzoo.get_method("source_copy") is SourceCopy
    assert "source_copy" in animzoo.list_methods()


def test_load_weights_into_from_folder_and_checkpoint(tmp_path: Path) -> None:
    trained = _module()
    hub.save_pretrained(trained, tmp_path / "pre")
    ckpt = _write_ckpt(trained, tmp_path / "m.ckpt")
    for source, with_discriminator in ((tmp_path / "pre", False), (str(ckpt), True)):
        fresh = CentroidShift(mix=0.5)
        fresh_discriminator = fresh.discriminator[0].weight.clone()
        assert not torch.equal(fresh.proj.weight, trained.proj.weight)
        hub.load_weights_into(fresh, source)
        for key, value in trained.state_dict().items():
            if with_discriminator or not key.startswith("discriminator."):
                torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0, msg=key)
        # A pretrained folder has no discriminator (save_pretrained leaves it out): it stays as built.
        kept = fresh.discriminator[0].weight
        assert torch.equal(kept, trained.discriminator[0].weight if with_discriminator else fresh_discriminator)
    state = torch.load(ckpt, weights_only=False)
    state["state_dict"]["proj.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save(state, tmp_path / "wrong.ckpt")
    with pytest.raises(hub.PretrainedMismatchError, match=r"wrong\.ckpt.*proj\.weight: file \(1, 1, 1, 1\)"):
        hub.load_weights_into(CentroidShift(mix=0.5), tmp_path / "wrong.ckpt")
    with pytest.raises(hub.PretrainedNotFoundError, match="no such checkpoint"):
        hub.load_weights_into(CentroidShift(mix=0.5), tmp_path / "missing.ckpt")
