"""The challenger beside the champion: named after training, promoted on shadow evidence.

After each promotion decision (:func:`after_decision`) a candidate that missed the gate, or
passed it but awaits shadow evidence, becomes the registry's challenger when it is the best one
in view; the inference chain then predicts every new scene with it in shadow
(:mod:`inference.shadow`). :func:`promote_challenger` (``landcover promote-challenger``) reads
the ledger's shadow evidence for it beside the current champion and runs the promotion gate
again with the config's shadow criteria (``training.shadow``).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any

from core import registry
from training import promotion

log = logging.getLogger(__name__)


def shadow_criteria(cfg: Any) -> promotion.ShadowCriteria:
    """The shadow criteria of the composed config's ``training.shadow``."""
    shadow = cfg.training.shadow
    return promotion.ShadowCriteria(
        min_scenes=int(shadow.min_scenes),
        min_agreement=float(shadow.min_agreement),
        max_area_shift=float(shadow.max_area_shift),
    )


def after_decision(cfg: Any, decision: promotion.PromotionDecision) -> dict[str, Any] | None:
    """Name ``decision``'s candidate the challenger when it should predict in shadow; the pointer.

    A promoted candidate leaves no challenger behind that names it. One that awaits shadow
    evidence is always named; one that missed the gate only when ``training.shadow.name_challenger``
    is on and it beats the current challenger's held-out mIoU (or there is none, or it was promoted).
    """
    root, name = cfg.storage.registry_uri, cfg.model_name
    if decision.promoted:
        promotion.clear_challenger(root, name, decision.version)
        return None
    current = registry.challenger(root, name)
    champion = registry.champion(root, name)
    stale = current is None or (champion is not None and current["version"] == champion["version"])
    if not decision.awaiting_shadow:
        if not cfg.training.shadow.name_challenger:
            return None
        if not stale and decision.candidate_miou <= float(current["miou"]):
            log.info("challenger %s stays (held-out mIoU %.4f)", current["version"], float(current["miou"]))
            return None
    pointer = promotion.name_challenger(root, name, decision.version, decision.reason)
    log.info("challenger is now %s: it predicts new scenes in shadow beside the champion", decision.version)
    return pointer


def promote_candidate(cfg: Any, version: str) -> tuple[promotion.PromotionDecision, dict[str, Any] | None]:
    """The promotion decision on a newly registered ``version``, and the challenger pointer it names.

    There is no shadow evidence for a new version yet: with shadow criteria required, a
    candidate that passes the held-out gate awaits them as the challenger.
    """
    decision = promotion.promote_if_better(
        cfg.storage.registry_uri,
        cfg.model_name,
        version,
        margin=cfg.training.promotion_margin,
        shadow=shadow_criteria(cfg),
    )
    return decision, after_decision(cfg, decision)


def shadow_evidence(cfg: Any, champion_version: str, challenger_version: str) -> dict[str, Any]:
    """What the ledger of the config's inference chain holds on the challenger."""
    from inference.ledger import repository
    from inference.settings import settings_from_config
    from inference.transactions import session

    with session(settings_from_config(cfg)) as s:
        return repository.shadow_evidence(s, champion_version, challenger_version)


def promote_challenger(cfg: Any) -> promotion.PromotionDecision:
    """The promotion gate, held-out and shadow criteria, for the registry's challenger.

    Raises:
        registry.RegistryError: there is no challenger, or no champion to compare it with.
    """
    root, name = cfg.storage.registry_uri, cfg.model_name
    pointer, champion = registry.challenger(root, name), registry.champion(root, name)
    if pointer is None or champion is None:
        raise registry.RegistryError(
            f"{name} has no {'challenger' if pointer is None else 'champion'} in {root}; "
            "a training run names one (training.shadow)"
        )
    version = str(pointer["version"])
    evidence = shadow_evidence(cfg, str(champion["version"]), version)
    decision = promotion.promote_if_better(
        root,
        name,
        version,
        margin=cfg.training.promotion_margin,
        shadow=shadow_criteria(cfg),
        evidence=evidence,
    )
    if decision.promoted:
        promotion.clear_challenger(root, name, version)
    log.info(
        "[promote-challenger] %s: %s (shadow: %d scenes, agreement %s)",
        decision.outcome,
        decision.reason,
        evidence["scenes"],
        evidence["agreement"],
    )
    return decision


def main(argv: Sequence[str] | None = None) -> int:
    """``landcover promote-challenger [OVERRIDES...]``: 0 when promoted, 1 when held back."""
    from core.config import compose
    from core.logs import configure_console

    p = argparse.ArgumentParser(prog="landcover promote-challenger", description=promote_challenger.__doc__)
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. training.shadow.min_scenes=20")
    args = p.parse_args(argv)
    configure_console()
    decision = promote_challenger(compose(args.overrides))
    return 0 if decision.promoted else 1
