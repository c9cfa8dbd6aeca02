"""Admin: accounts and roles, data roots and export roots (admins only; team mode)."""

from ui.admin_view import render_admin
from ui.widgets import guard, page_setup

page_setup("Admin", "🔐", (
    "Accounts (add, role, disable, reset password), the data roots folders may be opened from in team mode, "
    "and the export roots exports and manifests may be written to. Every change is kept in the admin log."))

with guard("Admin"):
    render_admin()
