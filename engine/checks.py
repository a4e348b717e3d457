"""``meridian check``: validate every channel file and compile every template it uses."""

from __future__ import annotations

from engine.config import Channel, HubSettings
from engine.errors import ConfigError
from engine.loader import channel_files, load_channel
from engine.templating import TemplateEnvironment

__all__ = ["check_all", "load_and_check"]


def check_all(settings: HubSettings) -> list[str]:
    """Every problem found, one line each (file, line, field, reason); empty when all is valid."""
    problems: list[str] = []
    templates = TemplateEnvironment(settings.resolved_transforms_dir(), uid_root=settings.uid_root)
    names: dict[str, str] = {}
    for path in channel_files(settings.channels_dir):
        try:
            channel = load_channel(path)
            _check_templates(channel, templates)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        if channel.name in names:
            problems.append(
                f"{path}: name: channel '{channel.name}' is also in {names[channel.name]}"
            )
        names[channel.name] = str(path)
    return problems


def load_and_check(settings: HubSettings) -> list[Channel]:
    """Load every channel and compile its templates; the first problem raises ConfigError."""
    from engine.loader import load_channels

    templates = TemplateEnvironment(settings.resolved_transforms_dir(), uid_root=settings.uid_root)
    channels = load_channels(settings.channels_dir)
    for channel in channels:
        _check_templates(channel, templates)
    return channels


def _check_templates(channel: Channel, templates: TemplateEnvironment) -> None:
    transforms = [channel.file.transform] + [d.spec.transform for d in channel.destinations]
    for transform in transforms:
        if transform is None:
            continue
        try:
            templates.check(transform.template)
        except ConfigError as exc:
            raise ConfigError(f"{channel.path}: transform.template: {exc}") from exc
    rules = [*channel.file.filters, *(r for d in channel.destinations for r in d.spec.filters)]
    for rule in rules:
        try:
            templates.compile_expression(rule.when)
        except ConfigError as exc:
            raise ConfigError(f"{channel.path}: filter '{rule.name}': {exc}") from exc
    for destination in channel.destinations:
        key = destination.spec.queue.order_key
        if key is None:
            continue
        try:
            templates.compile_template(key)
        except ConfigError as exc:
            where = f"{channel.path}: destination '{destination.spec.name}': queue.order_key"
            raise ConfigError(f"{where}: {exc}") from exc
    if channel.file.normalize is not None:
        from engine.normalize import Normalizer

        # No worklist needed to check: linking is only exercised on real images.
        config = channel.file.normalize.model_copy(update={"link_worklist": False})
        try:
            Normalizer(config, templates).check()
        except ConfigError as exc:
            raise ConfigError(f"{channel.path}: normalize: {exc}") from exc
