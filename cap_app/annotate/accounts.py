"""Who is annotating: a signed-in account with a role, never a name the client types.

Why: judgements train the next model, so each must be someone's, and a visitor of a public
deployment must not read, write or withdraw anyone else's. The identity of every call comes from
the request the server authenticated:

- on a Hugging Face Space with `hf_oauth: true`: the Hugging Face account signed in with
  gr.LoginButton (its gr.OAuthProfile); admins are listed in $CAP_ADMINS, annotators in
  $CAP_ANNOTATORS (empty: any signed-in account may annotate);
- elsewhere, with $CAP_USERS: accounts in that users file (`python -m cap_app users ...`), each
  password kept only as an argon2id hash (argon2-cffi), checked by Gradio's own login
  (`launch(auth=check_password)`), so the page and gradio_client(auth=...) sign in alike;
- served on this machine only (127.0.0.1, no accounts, not a Space): one person, stored under a
  local name, with every right;
- anything else (reachable from other machines, or a Space, without accounts): nobody may
  annotate, and the page says how to set accounts up. The Refine tab is open either way.

Roles: an annotator judges, undoes and sees only their own judgements, and uploads batches; an
admin also loads files on the server by path, sees everyone's judgements, agreement and exports,
and deletes batches.
"""

from __future__ import annotations

import dataclasses
import getpass
import ipaddress
import json
import os
import re
import tempfile
import threading
from pathlib import Path

ROLES = ("annotator", "admin")
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024
MAX_NAME_CHARS = 80  # of any annotator's name: an account's, the local one, and what the store keeps
NAME_PATTERN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._@-]{{0,{MAX_NAME_CHARS - 1}}}")
USERS_FILE_VERSION = 1
SETUP_HINT = (
    "Annotating here needs accounts, so nothing is stored: on a Hugging Face Space add `hf_oauth: true` to the "
    "README metadata (and list annotators in CAP_ANNOTATORS), elsewhere create a users file with "
    "`python -m cap_app users add NAME --role admin` and start the app with CAP_USERS pointing to it."
)

_bind_host = {"host": None}  # set by the launcher: where the server listens decides who may reach it
_users_cache: dict = {"key": None, "users": {}}
_users_lock = threading.Lock()


class Refused(Exception):
    """A call the caller may not make; the message says why (shown as is)."""


class AccountError(ValueError):
    """Bad input to the users file (a name, role or password), or a file that cannot be used."""


@dataclasses.dataclass(frozen=True)
class Identity:
    """The signed-in caller of one request."""

    name: str
    role: str  # one of ROLES
    origin: str  # "page" (a browser on the app's page) or "api" (any other client)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


# -- where the app runs -----------------------------------------------------------------------


def set_bind_host(host: str | None) -> None:
    """Called by the launcher with the address the server listens on."""
    _bind_host["host"] = host


def bind_host() -> str:
    return _bind_host["host"] or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"


def on_space() -> bool:
    return bool(os.environ.get("SPACE_ID"))


def oauth_configured() -> bool:
    """Spaces set OAUTH_CLIENT_ID when the README metadata says `hf_oauth: true`."""
    return on_space() and bool(os.environ.get("OAUTH_CLIENT_ID"))


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def access_mode() -> str:
    """'oauth' (Sign in with Hugging Face), 'users' (the users file), 'local' (one person on this
    machine) or 'closed' (no annotating)."""
    if oauth_configured():
        return "oauth"
    if os.environ.get("CAP_USERS"):
        return "users"
    if not on_space() and _loopback(bind_host()):
        return "local"
    return "closed"


def normal_name(name: str | None) -> str:
    """A name as judgements are stored under it: whitespace runs made one space, none at the ends."""
    return " ".join((name or "").split())


def local_name() -> str:
    """The name a local, account-less session stores judgements under: $CAP_LOCAL_NAME, else the OS user."""
    configured = normal_name(os.environ.get("CAP_LOCAL_NAME"))
    if configured:
        return configured[:MAX_NAME_CHARS]
    try:
        return getpass.getuser()[:MAX_NAME_CHARS] or "local"
    except (KeyError, OSError):
        return "local"


def _names(variable: str) -> set[str]:
    return {name.strip().lower() for name in os.environ.get(variable, "").replace(";", ",").split(",") if name.strip()}


# -- identifying a request ----------------------------------------------------------------------


def request_origin(request) -> str:
    """'page' when a browser sent the call (browsers add Sec-Fetch-Mode, which page scripts cannot
    set), else 'api'. An audit hint, not a security boundary: a script may send the header too."""
    headers = getattr(request, "headers", None) or {}
    try:
        return "page" if headers.get("sec-fetch-mode") else "api"
    except AttributeError:
        return "api"


def identify(request, profile=None) -> Identity:
    """The caller of `request` (on a Space, `profile` is the gr.OAuthProfile Gradio passes a handler
    for the session's Hugging Face sign-in), or Refused saying why they may not annotate."""
    mode = access_mode()
    origin = request_origin(request)
    if mode == "local":
        return Identity(local_name(), "admin", origin)
    if mode == "closed":
        raise Refused(SETUP_HINT)
    if mode == "users":
        name = getattr(request, "username", None)
        if not name:
            raise Refused("Sign in to annotate (this server has accounts).")
        role = user_role(name)
        if role is None:
            raise Refused(f"The account {name} no longer exists here; ask an admin.")
        return Identity(name, role, origin)
    name = getattr(profile, "username", None) if profile is not None else None
    if not name:
        raise Refused("Sign in with Hugging Face (the button above) to annotate.")
    if name.lower() in _names("CAP_ADMINS"):
        return Identity(name, "admin", origin)
    annotators = _names("CAP_ANNOTATORS")
    if annotators and name.lower() not in annotators:
        raise Refused(f"The Hugging Face account {name} is not on this Space's list of annotators.")
    return Identity(name, "annotator", origin)


def require_admin(identity: Identity, what: str) -> None:
    if not identity.is_admin:
        raise Refused(f"Only an admin may {what}; you are signed in as {identity.name} ({identity.role}).")


def describe_access(request, profile=None) -> str:
    """One sentence for the top of the Annotate tab: who the page stores judgements as, or why not."""
    mode = access_mode()
    if mode == "closed":
        return SETUP_HINT
    if mode == "local":
        return (
            f"Local use without accounts: your judgements are stored under the local name {local_name()} "
            "(served on this machine only; see the README to annotate as a team)."
        )
    try:
        who = identify(request, profile)
    except Refused as refused:
        return str(refused)
    return f"Signed in as {who.name} ({who.role}): every judgement you make is stored under this account."


# -- the users file ----------------------------------------------------------------------------


def _hasher():
    from argon2 import PasswordHasher

    return PasswordHasher()  # argon2id with the library's current recommended costs


def users_path(path: str | os.PathLike | None = None) -> Path:
    configured = path or os.environ.get("CAP_USERS")
    if not configured:
        raise AccountError("Name the users file: set CAP_USERS or pass --file.")
    return Path(configured)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise AccountError(
            f"An account name is 1 to {MAX_NAME_CHARS} letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit."
        )
    return name


def read_users(path: str | os.PathLike | None = None) -> dict[str, dict]:
    """name -> {"role", "hash"}; an absent file has no users."""
    path = users_path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise AccountError(f"Cannot read the users file {path}: {exc}") from exc
    users = data.get("users") if isinstance(data, dict) else None
    if not isinstance(users, dict):
        raise AccountError(f"{path} is not a users file.")
    return {
        name: entry
        for name, entry in users.items()
        if isinstance(entry, dict) and entry.get("role") in ROLES and isinstance(entry.get("hash"), str)
    }


def _write_users(path: Path, users: dict[str, dict]) -> None:
    """Replace the file atomically, readable by its owner only (it holds password hashes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"version": USERS_FILE_VERSION, "users": users}, fh, indent=1, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_user(name: str, password: str, role: str, path: str | os.PathLike | None = None) -> bool:
    """Create or update an account; True when it is new."""
    check_name(name)
    if role not in ROLES:
        raise AccountError(f"The role must be one of {', '.join(ROLES)}.")
    if not isinstance(password, str) or not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise AccountError(f"A password has {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters.")
    path = users_path(path)
    users = read_users(path)
    new = name not in users
    users[name] = {"role": role, "hash": _hasher().hash(password)}
    _write_users(path, users)
    return new


def remove_user(name: str, path: str | os.PathLike | None = None) -> bool:
    """Delete an account (its judgements stay, under its name); True when it existed."""
    path = users_path(path)
    users = read_users(path)
    if users.pop(name, None) is None:
        return False
    _write_users(path, users)
    return True


def _current_users() -> dict[str, dict]:
    """The users file named by $CAP_USERS, reread whenever it changes (a removed account loses
    access at its next call, without a restart)."""
    path = users_path()
    try:
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size, stat.st_ino)
    except OSError:
        key = (str(path), None)
    with _users_lock:
        if _users_cache["key"] != key:
            _users_cache["users"] = read_users(path)
            _users_cache["key"] = key
        return _users_cache["users"]


def user_role(name: str) -> str | None:
    try:
        entry = _current_users().get(name)
    except AccountError:
        return None
    return entry["role"] if entry else None


_DUMMY_HASH: list[str] = []


def check_password(name: str, password: str) -> bool:
    """Gradio's login check (`launch(auth=check_password)`). An unknown name costs the same hash
    check as a known one, so timing does not tell which accounts exist."""
    from argon2.exceptions import Argon2Error, InvalidHashError

    hasher = _hasher()
    try:
        entry = _current_users().get(name) if isinstance(name, str) else None
    except AccountError:
        entry = None
    if not _DUMMY_HASH:
        _DUMMY_HASH.append(hasher.hash("not a password of anyone"))
    try:
        ok = hasher.verify(entry["hash"] if entry else _DUMMY_HASH[0], password if isinstance(password, str) else "")
    except (Argon2Error, InvalidHashError):
        return False
    return bool(ok and entry)


def gradio_auth():
    """What to pass as `launch(auth=...)`: the users-file check when accounts come from a file, else None."""
    return check_password if access_mode() == "users" else None
