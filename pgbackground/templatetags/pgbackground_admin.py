"""Template tags of pgbackground's admin templates."""

from __future__ import annotations

import inspect
from typing import Any

from django import template
from django.contrib.admin.templatetags.base import InclusionAdminNode

from ..admin import paging

register = template.Library()

# Django 6.1 added a leading ``name`` argument to InclusionAdminNode (the tag's name, for error
# messages); 5.2 and 6.0 do not take it.
_TAKES_NAME = "name" in inspect.signature(InclusionAdminNode.__init__).parameters


@register.tag(name="pgb_date_hierarchy")
def pgb_date_hierarchy_tag(parser: Any, token: Any) -> InclusionAdminNode:
    """Django's ``date_hierarchy`` (same template, same look) computed with index probes."""
    name: dict[str, Any] = {"name": "pgb_date_hierarchy"} if _TAKES_NAME else {}
    return InclusionAdminNode(
        parser=parser,
        token=token,
        func=lambda cl: paging.date_hierarchy(cl) or {"show": False},
        template_name="date_hierarchy.html",
        takes_context=False,
        **name,
    )
