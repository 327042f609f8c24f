"""The admin UI at `/_admin`, served over HTTP by the control plane process.

app.py       the Starlette app: pages, forms, the request pipeline (session, CSRF, authorize)
├── actions.py   a form -> the same domain command the RPCs build; preview; apply
├── approvals.py four eyes: requests as rows, what approving one would change
├── analysis.py  the feature page's verdict, soak by exposure and reach
├── events.py    live updates: the WatchHub as server-sent events
├── session.py   the signed session cookie and its CSRF token
└── signin.py    sign-in with the RPCs' credentials, by auth mode
server.py    uvicorn on the gRPC server's event loop
templates/   Jinja2 pages (autoescaped)    static/   admin.css, admin.js
"""

from releasecontrol_server.admin.app import AdminApp, AdminSettings, create_app
from releasecontrol_server.admin.server import AdminServer
from releasecontrol_server.admin.session import load_or_create_secret

__all__ = ["AdminApp", "AdminServer", "AdminSettings", "create_app", "load_or_create_secret"]
