"""Publish an exported model folder to the Hugging Face Hub, after checking it is complete and verifies.

    python -m rocl_zoo.export runs/fmnist_rocl --out export/cnn4_rocl.fmnist --onnx --repo-id rocl-zoo/cnn4_rocl.fmnist
    python -m training.publish export/cnn4_rocl.fmnist --repo-id rocl-zoo/cnn4_rocl.fmnist [--revision v1] [--private]

The token comes from HF_TOKEN or the user's login (`hf auth login`). Exactly the folder's model files are
uploaded (model.safetensors, config.json, README.md, model.onnx and results*.json when present); anything else in
the folder is left out, and those names left over on the Hub from an older upload are deleted in the same commit.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterable

from huggingface_hub import HfApi, get_token

from rocl_zoo.cli import run
from rocl_zoo.errors import ConfigError, IntegrityError
from rocl_zoo.hub import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME

REQUIRED = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)
MANAGED = [WEIGHTS_NAME, CONFIG_NAME, CARD_NAME, "model.onnx", "results*.json"]  # what a publish owns on the Hub


def check_folder(folder, *, require_results: bool = True) -> list[str]:
    """Verify an exported folder and return the exact files to upload, sorted.

    Refuses a folder that misses a required file, whose checksums, card metadata or weights do not verify
    (`rocl_zoo.load` must load it), that holds model files its config.json does not record, or (unless
    require_results=False) that has no results file.
    """
    from huggingface_hub import ModelCard

    from rocl_zoo.export import verify_folder

    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"No folder {folder}; write one with `python -m rocl_zoo.export SOURCE --out {folder}`.")
    missing = [name for name in REQUIRED if not (folder / name).is_file()]
    if missing:
        raise IntegrityError(f"{folder} is incomplete: {', '.join(missing)} missing. Re-export it with "
                             f"`python -m rocl_zoo.export SOURCE --out {folder} --onnx`.")
    try:
        config = verify_folder(folder)  # checksums of every recorded file, card metadata, rocl_zoo.load(folder)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IntegrityError(f"{folder / CONFIG_NAME} is not valid JSON ({e}); re-export the folder.") from e
    recorded = set((config.get("rocl_zoo") or {}).get("files") or {})
    present = {p.name for p in folder.iterdir() if p.is_file()}
    model_files = {n for n in present if n == "model.onnx" or (n.startswith("results") and n.endswith(".json"))}
    unrecorded = sorted(model_files - recorded)
    if unrecorded:
        raise IntegrityError(f"{folder} holds {unrecorded}, which config.json does not record (so nothing verifies "
                             f"them); re-export the folder rather than adding files by hand.")
    results = sorted(n for n in recorded if n.startswith("results"))
    if require_results and not results:
        raise ConfigError(f"{folder} has no results file: evaluate the model (`python -m rocl_zoo.evaluate`) and "
                          f"re-export with --results, or pass --allow-no-results.")
    if results and not ModelCard.load(folder / CARD_NAME).data.eval_results:
        raise IntegrityError(f"{folder / CARD_NAME} has no model-index although the folder has {results}; "
                             f"re-export the folder.")
    return sorted(set(REQUIRED) | recorded)


def publish(folder, repo_id: str, *, revision: str | None = None, private: bool = False, token: str | None = None,
            commit_message: str | None = None, require_results: bool = True, dry_run: bool = False):
    """Check `folder` and upload it to `repo_id` (created if needed; `revision` is a branch, created if needed).
    Returns the CommitInfo of the upload, or with dry_run the list of files that would be uploaded."""
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ConfigError(f"--repo-id must be ORG/NAME, got {repo_id!r}.")
    files = check_folder(folder, require_results=require_results)
    if dry_run:
        return files
    token = token or get_token()
    if not token:
        raise ConfigError("No Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access).")
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    config = json.loads((Path(folder) / CONFIG_NAME).read_text())
    message = commit_message or (f"Upload {config['architecture']} from rocl_zoo.export "
                                 f"(rocl-zoo {config.get('rocl_zoo', {}).get('version')})")
    return api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", revision=revision,
                             commit_message=message, allow_patterns=files, delete_patterns=MANAGED)


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.publish", description="Upload an exported model folder "
                                "(python -m rocl_zoo.export) to the Hugging Face Hub after verifying it.")
    p.add_argument("folder", help="folder written by `python -m rocl_zoo.export`")
    p.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub")
    p.add_argument("--revision", help="branch to upload to (created if needed; default main)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--message", help="commit message")
    p.add_argument("--allow-no-results", action="store_true", help="publish a folder without results files")
    p.add_argument("--dry-run", action="store_true", help="check the folder and list the files; upload nothing")
    return run(_main, p.parse_args(argv))


def _main(args) -> int:
    out = publish(args.folder, args.repo_id, revision=args.revision, private=args.private,
                  commit_message=args.message, require_results=not args.allow_no_results, dry_run=args.dry_run)
    if args.dry_run:
        print("\n".join(out))
        print(f"(dry run: {len(out)} files would go to {args.repo_id})")
    else:
        print(f"published {args.folder} to https://huggingface.co/{args.repo_id} "
              f"({getattr(out, 'commit_url', out)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
