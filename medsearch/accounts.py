"""Local accounts, API tokens and login lockout (a plain library: no web framework).

* Passwords are hashed with argon2id (argon2-cffi defaults, RFC 9106 "low
  memory" profile); a hash with outdated parameters is upgraded at the next
  successful login.
* API tokens are 256-bit random strings shown once; only their SHA-256 is
  stored (a token has full entropy, so a slow hash adds nothing), with a role
  and an expiry.
* Lockout state lives in the database, so it holds across server restarts and
  worker threads: after ``login_max_failures`` failures the account is locked for
  ``login_lockout_minutes``.
* Every change an administrator makes is recorded as an :class:`AdminEvent`,
  and every login attempt as a :class:`LoginEvent`.

**The SSO seam.**  The web layer only needs a :class:`Principal`.  An LDAP or
OIDC integration implements the :class:`Authenticator` protocol (``name`` and
``authenticate(inst, username, secret, remote_addr) -> Principal``) or, for
redirect-based OIDC, builds a :class:`Principal` from verified ID-token claims
and calls :func:`principal_for_external` (which maps the identity provider's
group to a role and records the login).  See docs/web.md.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Protocol

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import select

from medsearch.audit.events import AdminEvent, LoginEvent
from medsearch.errors import AuthError, ForbiddenError, InputError, NotFoundError
from medsearch.store.models import ApiToken, User

ROLES: tuple[str, ...] = ("radiologist", "compliance", "admin", "pacs")
MIN_PASSWORD = 10
#: Longer inputs are refused before hashing (a megabyte "password" is a denial-of-service attempt).
MAX_PASSWORD = 1024
TOKEN_PREFIX = "mst_"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
#: argon2id, RFC 9106 low-memory profile (t=3, m=64 MiB, p=4): argon2-cffi's defaults.
PRODUCTION_HASHER = PasswordHasher()
_hasher = PRODUCTION_HASHER
_dummy: list[tuple[PasswordHasher, str]] = []


def _dummy_hash() -> str:
    """Verified against when the user does not exist, so that timing does not tell.

    Made with the hasher in use (same cost as a real verify), on first use: not at import.
    """
    if not _dummy or _dummy[0][0] is not _hasher:
        _dummy[:] = [(_hasher, _hasher.hash(secrets.token_urlsafe(16)))]
    return _dummy[0][1]


@dataclass(frozen=True)
class Principal:
    """Who is acting: a logged-in user or an API token, with its role.

    ``allowed_sites`` is the list of sites (hospital sites, not anatomy) whose
    studies the user may see; None means all.  The search pipeline enforces it.
    """

    name: str
    role: str
    kind: str = "user"  # user | token | sso
    allowed_sites: tuple[str, ...] | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "role": self.role, "kind": self.kind,
                "allowed_sites": list(self.allowed_sites) if self.allowed_sites is not None else None}


class Authenticator(Protocol):
    """The seam for LDAP/OIDC: anything that turns credentials into a Principal."""

    name: str

    def authenticate(self, inst, username: str, secret: str, remote_addr: str = "") -> Principal: ...


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    # SQLite hands back naive datetimes; they were stored as UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InputError(f"Unknown role '{role}'.", f"Use one of: {', '.join(ROLES)}.")
    return role


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InputError("The name is not valid.",
                         "Use 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit.")
    return name


def hash_password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise InputError(f"The password is shorter than {MIN_PASSWORD} characters.",
                         f"Choose a password of at least {MIN_PASSWORD} characters.")
    if len(password) > MAX_PASSWORD:
        raise InputError(f"The password is longer than {MAX_PASSWORD} characters.", "Choose a shorter password.")
    return _hasher.hash(password)


def _principal(user: User) -> Principal:
    sites = tuple(user.allowed_sites) if user.allowed_sites is not None else None
    return Principal(user.name, user.role, "user", sites)


# --------------------------------------------------------------------------- users
def add_user(inst, name: str, password: str, role: str, actor: str = "cli",
             allowed_sites: list[str] | None = None) -> Principal:
    check_name(name)
    check_role(role)
    digest = hash_password(password)
    with inst.sessions() as s, s.begin():
        if s.execute(select(User.id).where(User.name == name)).first():
            raise InputError(f"A user named '{name}' exists already.",
                             "Pick another name, or disable the old account first.")
        s.add(User(name=name, password_hash=digest, role=role, allowed_sites=allowed_sites))
    inst.track(AdminEvent(actor=actor, action="user.add", target=name,
                          detail={"role": role, "allowed_sites": allowed_sites}))
    return Principal(name, role, "user", tuple(allowed_sites) if allowed_sites is not None else None)


def list_users(inst) -> list[dict]:
    now = _now()
    with inst.sessions() as s:
        rows = s.execute(select(User).order_by(User.name)).scalars().all()
        return [{"name": u.name, "role": u.role, "disabled": bool(u.disabled),
                 "locked": bool(u.locked_until and _aware(u.locked_until) > now),
                 "allowed_sites": u.allowed_sites, "created_at": _aware(u.created_at).isoformat()}
                for u in rows]


def _get_user(s, name: str) -> User:
    user = s.execute(select(User).where(User.name == name)).scalar_one_or_none()
    if user is None:
        raise NotFoundError(f"No user named '{name}'.", "Run 'medsearch users list' to see the users.")
    return user


def disable_user(inst, name: str, actor: str = "cli") -> None:
    with inst.sessions() as s, s.begin():
        _get_user(s, name).disabled = True
    inst.track(AdminEvent(actor=actor, action="user.disable", target=name))


def enable_user(inst, name: str, actor: str = "cli") -> None:
    """Re-enable an account and clear its lockout."""
    with inst.sessions() as s, s.begin():
        user = _get_user(s, name)
        user.disabled, user.failed_logins, user.locked_until = False, 0, None
    inst.track(AdminEvent(actor=actor, action="user.enable", target=name))


def set_password(inst, name: str, password: str, actor: str = "cli") -> None:
    digest = hash_password(password)
    with inst.sessions() as s, s.begin():
        _get_user(s, name).password_hash = digest
    inst.track(AdminEvent(actor=actor, action="user.password", target=name))


def current_principal(inst, name: str) -> Principal | None:
    """The principal for a logged-in session, or None when the account is gone or disabled."""
    with inst.sessions() as s:
        user = s.execute(select(User).where(User.name == name)).scalar_one_or_none()
        if user is None or user.disabled:
            return None
        return _principal(user)


_BAD_LOGIN = ("Wrong user name or password, or the account is locked or disabled.",
              "Check the credentials; after repeated failures wait for the lockout to end or ask an admin.")


def authenticate(inst, name: str, password: str, remote_addr: str = "") -> Principal:
    """Check a password; count failures and lock the account after too many.

    The error never says which part was wrong (user, password, lockout), so
    that an attacker cannot enumerate accounts.  Every attempt is audited.
    """
    settings = inst.settings
    now = _now()
    actor = name[:64] if isinstance(name, str) else ""
    if not isinstance(password, str) or len(password) > MAX_PASSWORD:
        password = ""  # still verified (and counted) below, at the normal cost
    reason = "bad_credentials"
    principal = None
    with inst.sessions() as s, s.begin():
        user = s.execute(select(User).where(User.name == actor)).scalar_one_or_none() if actor else None
        blocked = user is None or user.disabled or bool(user.locked_until and _aware(user.locked_until) > now)
        if blocked:
            # The same argon2 cost as a real check: timing must not tell unknown, locked or disabled apart.
            try:
                _hasher.verify(_dummy_hash(), password or "")
            except (VerificationError, InvalidHashError):
                pass
            if user is not None:
                reason = "disabled" if user.disabled else "locked"
        else:
            try:
                _hasher.verify(user.password_hash, password or "")
                if _hasher.check_needs_rehash(user.password_hash):
                    user.password_hash = _hasher.hash(password)
                user.failed_logins, user.locked_until = 0, None
                principal = _principal(user)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                user.failed_logins = (user.failed_logins or 0) + 1
                if user.failed_logins >= settings.login_max_failures:
                    user.locked_until = now + dt.timedelta(minutes=settings.login_lockout_minutes)
                    user.failed_logins = 0
                    reason = "locked_now"
    if principal is not None:
        inst.track(LoginEvent(actor=actor, outcome="success", method="password", remote_addr=remote_addr))
        return principal
    inst.track(LoginEvent(actor=actor, outcome="failure", method=f"password:{reason}", remote_addr=remote_addr))
    raise AuthError(*_BAD_LOGIN)


def principal_for_external(inst, name: str, role: str, method: str, remote_addr: str = "",
                           allowed_sites: list[str] | None = None) -> Principal:
    """Accept an identity verified by an external IdP (LDAP bind, OIDC ID token).

    The caller has verified the credentials; this maps them to a principal and
    records the login, so SSO logins are audited like local ones.
    """
    check_name(name)
    check_role(role)
    inst.track(LoginEvent(actor=name, outcome="success", method=method, remote_addr=remote_addr))
    return Principal(name, role, "sso", tuple(allowed_sites) if allowed_sites is not None else None)


# --------------------------------------------------------------------------- tokens
def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(inst, name: str, role: str = "pacs", days: int | None = None, actor: str = "cli") -> str:
    """Create a token and return it; it is shown this once and stored only as a hash."""
    check_name(name)
    check_role(role)
    days = inst.settings.token_days if days is None else days
    if not isinstance(days, int) or days < 1 or days > 3650:
        raise InputError("The token lifetime must be between 1 and 3650 days.", "Pass --days N with N in 1..3650.")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires = _now() + dt.timedelta(days=days)
    with inst.sessions() as s, s.begin():
        s.add(ApiToken(name=name, token_hash=token_hash(token), role=role, expires_at=expires))
    inst.track(AdminEvent(actor=actor, action="token.create", target=name,
                          detail={"role": role, "expires_at": expires.isoformat(timespec="seconds")}))
    return token


def revoke_token(inst, name: str, actor: str = "cli") -> int:
    """Revoke every live token of that name; return how many."""
    now = _now()
    with inst.sessions() as s, s.begin():
        rows = s.execute(select(ApiToken).where(ApiToken.name == name, ApiToken.revoked_at.is_(None))).scalars().all()
        if not rows:
            raise NotFoundError(f"No live token named '{name}'.", "Run 'medsearch tokens list' to see them.")
        for row in rows:
            row.revoked_at = now
    inst.track(AdminEvent(actor=actor, action="token.revoke", target=name, detail={"count": len(rows)}))
    return len(rows)


def list_tokens(inst) -> list[dict]:
    now = _now()
    with inst.sessions() as s:
        rows = s.execute(select(ApiToken).order_by(ApiToken.name, ApiToken.id)).scalars().all()
        return [{"name": t.name, "role": t.role, "expires_at": _aware(t.expires_at).isoformat(timespec="seconds"),
                 "state": "revoked" if t.revoked_at else ("expired" if _aware(t.expires_at) <= now else "live")}
                for t in rows]


def verify_token(inst, token: str) -> Principal:
    """The principal of a bearer token; AuthError when missing, unknown, revoked or expired."""
    if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        raise AuthError("The API token is missing or malformed.",
                        "Send 'Authorization: Bearer <token>' with a token from 'medsearch tokens create'.")
    digest = token_hash(token)
    with inst.sessions() as s:
        row = s.execute(select(ApiToken).where(ApiToken.token_hash == digest)).scalar_one_or_none()
        # compare_digest: the lookup is by hash already; this keeps the final check constant-time.
        if row is None or not hmac.compare_digest(row.token_hash, digest):
            raise AuthError("The API token is not valid.", "Create a new token with 'medsearch tokens create'.")
        if row.revoked_at is not None:
            raise AuthError("The API token was revoked.", "Create a new token with 'medsearch tokens create'.")
        if _aware(row.expires_at) <= _now():
            raise AuthError("The API token has expired.", "Create a new token with 'medsearch tokens create'.")
        return Principal(row.name, row.role, "token", None)


def require_role(principal: Principal | None, roles: tuple[str, ...] | frozenset[str]) -> Principal:
    """401 without a principal, 403 when its role is not one of ``roles``."""
    if principal is None:
        raise AuthError("Authentication is required.", "Log in, or send 'Authorization: Bearer <token>'.")
    if principal.role not in roles:
        raise ForbiddenError(f"The role '{principal.role}' may not do this.",
                             f"Use an account with one of the roles: {', '.join(sorted(roles))}.")
    return principal
