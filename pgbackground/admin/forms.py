"""Forms of the admin: the launch form (validated by the library's own validators, so the form
and ``pgbackground.launch()`` can never disagree) and the grace field of the bulk actions."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.admin.helpers import ActionForm
from django.utils.translation import gettext_lazy as _

from .. import launcher
from ..conf import MAX_CANCEL_GRACE, MAX_LABEL_CHARS


def parse_gucs(text: str) -> dict[str, str]:
    """``name = value`` lines (blank lines and ``#`` comments skipped) -> a dict, in order.

    Quotes around a value are removed (``search_path = 'a, b'``). Raises ValueError naming the
    line at fault; names and policy are checked by :func:`pgbackground.launcher.validate_gucs`.
    """
    gucs: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name:
            raise ValueError(
                _("line %(n)d: expected 'name = value', got %(line)r") % {"n": number, "line": line}
            )
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if name in gucs:
            raise ValueError(_("line %(n)d: %(name)s is set twice") % {"n": number, "name": name})
        gucs[name] = value
    return gucs


def format_gucs(gucs: dict[str, Any] | None) -> str:
    return "\n".join(f"{k} = {v}" for k, v in (gucs or {}).items())


class LaunchForm(forms.Form):
    sql = forms.CharField(
        label=_("SQL"),
        strip=False,
        widget=forms.Textarea(
            attrs={
                "rows": 12,
                "class": "pgb-sql-input",
                "spellcheck": "false",
                "autocapitalize": "off",
                "autocomplete": "off",
                "placeholder": "VACUUM (VERBOSE, ANALYZE) my_table",
            }
        ),
        help_text=_(
            "Runs like psql -c: one string, several statements in one implicit transaction. "
            "Call SELECT pgbackground_progress(50, 'halfway') to report progress."
        ),
    )
    label = forms.CharField(
        label=_("Label"),
        required=False,
        max_length=MAX_LABEL_CHARS,
        widget=forms.TextInput(attrs={"class": "vTextField", "placeholder": _("nightly vacuum")}),
    )
    timeout = forms.FloatField(
        label=_("Timeout (seconds)"),
        required=False,
        min_value=0,
        widget=forms.NumberInput(attrs={"step": "any", "class": "vIntegerField"}),
        help_text=_("Empty: the WORKER_TIMEOUT setting. 0: no limit."),
    )
    max_result_bytes = forms.IntegerField(
        label=_("Result limit (bytes)"),
        required=False,
        min_value=0,
        widget=forms.NumberInput(attrs={"class": "vIntegerField"}),
        help_text=_(
            "Empty: the DEFAULT_MAX_RESULT_BYTES setting. A larger result fails the job "
            "(SQLSTATE 54000)."
        ),
    )
    gucs = forms.CharField(
        label=_("Settings (GUC overrides)"),
        required=False,
        strip=False,
        widget=forms.Textarea(
            attrs={
                "rows": 4,
                "class": "pgb-sql-input",
                "spellcheck": "false",
                "placeholder": "work_mem = 256MB\nstatement_timeout = 0",
            }
        ),
        help_text=_(
            "One 'name = value' per line. Your session's settings and role are carried "
            "over; these override them."
        ),
    )
    fire_and_forget = forms.BooleanField(
        label=_("Fire and forget"),
        required=False,
        help_text=_("Keep no result rows (state, errors and notices are still recorded)."),
    )

    def clean_sql(self) -> str:
        try:
            return launcher.validate_sql(self.cleaned_data["sql"])
        except (TypeError, ValueError) as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean_label(self) -> str:
        try:
            return launcher.validate_label(self.cleaned_data.get("label") or None)
        except (TypeError, ValueError) as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean_timeout(self) -> float | None:
        try:
            return launcher.validate_seconds(self.cleaned_data.get("timeout"), "timeout")
        except (TypeError, ValueError) as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean_max_result_bytes(self) -> int | None:
        value = self.cleaned_data.get("max_result_bytes")
        if value is None:
            return None
        try:
            return launcher.validate_max_result_bytes(value)
        except (TypeError, ValueError) as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean_gucs(self) -> dict[str, str]:
        try:
            return launcher.validate_gucs(parse_gucs(self.cleaned_data.get("gucs") or ""))
        except (TypeError, ValueError) as exc:
            raise forms.ValidationError(str(exc)) from None


class JobActionForm(ActionForm):
    """The changelist's action bar, with the grace of "cancel with grace"."""

    # Not validated here (a bad value would read "No action selected"): the action says why.
    grace = forms.CharField(
        label=_("Grace (s):"),
        required=False,
        widget=forms.NumberInput(
            attrs={"step": "any", "min": "0", "class": "pgb-grace-input", "placeholder": "30"}
        ),
    )


class GraceForm(forms.Form):
    grace = forms.FloatField(required=False, min_value=0)

    def grace_seconds(self) -> float:
        value = self.cleaned_data.get("grace")
        return min(float(value or 0.0), MAX_CANCEL_GRACE)
