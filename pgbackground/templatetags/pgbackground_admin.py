"""Template tags of pgbackground's admin templates."""

from __future__ import annotations

from typing import Any

from django import template
from django.contrib.admin.templatetags.base import InclusionAdminNode

from ..admin import paging

register = template.Library()


@register.tag(name="pgb_date_hierarchy")
def pgb_date_hierarchy_tag(parser: Any, token: Any) -> InclusionAdminNode:
    """Django's ``date_hierarchy`` (same template, same look) computed with index probes."""
    return InclusionAdminNode(
        parser,
        token,
        func=lambda cl: paging.date_hierarchy(cl) or {"show": False},
        template_name="date_hierarchy.html",
        takes_context=False,
    )
