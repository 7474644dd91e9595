"""A chat room: a page served by the app, a WebSocket mounted by a Blueprint.

    python examples/chat.py [--port 8000]      then open http://127.0.0.1:8000/
    geo-ws run examples.chat:app

Every message is broadcast to every chat client as ``{"from": NAME, "text": MSG}``;
joins and leaves as ``{"event": "join" | "leave" | "back", "name": NAME}`` ("back": a
page that dropped, its leave sent, came back and resumed), and who is online, after each
change, as ``{"event": "online", "names": [NAME, ...]}`` (presence: with a Redis broker,
across every worker; a crashed worker's clients drop out by themselves).

The page talks through geo_ws.js, the browser client geo_ws serves (``browser_client``):
after a drop (a network blip, a server restart) it reconnects and resumes, and shows every
message once, in order; what is typed while offline is sent once it is back.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402

from flask import Blueprint, Flask, url_for  # noqa: E402

from geo_ws import WebSocket, browser_client, run  # noqa: E402

chat = Blueprint("chat", __name__, url_prefix="/chat")
# recovery: a page that drops and comes back within 5 minutes misses nothing.
room = WebSocket(chat, "/ws", recovery=True)


def name_of(ws):
    return ws.query_params.get("name") or "anonymous"


@room.on("connect")
def join(ws):
    # A page that resumed after a drop is back (its close handler said it left).
    event = "back" if ws.resumed else "join"
    ws.sync_broadcast(json.dumps({"event": event, "name": name_of(ws)}))
    ws.set_presence({"name": name_of(ws)})


@room.on_presence
def online(event):
    """Someone came or went, wherever they were connected: tell everyone who is here."""
    if event.room is None and event.kind != "update":
        names = sorted(info["name"] for info in room.presence().values())
        room.sync_broadcast(json.dumps({"event": "online", "names": names}))


@room.on("message")
def say(ws, msg):
    ws.sync_broadcast(json.dumps({"from": name_of(ws), "text": msg}))


@room.on("close")
def leave(ws):
    ws.sync_broadcast(json.dumps({"event": "leave", "name": name_of(ws)}))


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>geo_ws chat</title>
<style>
 body { font: 15px system-ui, sans-serif; max-width: 40em; margin: 2em auto; }
 #log { border: 1px solid #ccc; height: 20em; overflow-y: auto; padding: .5em; }
 .event { color: #777; font-style: italic; }
</style></head>
<body>
<h1>geo_ws chat</h1>
<p>Name <input id="name" value="guest"> <button id="join">Join</button>
   <button id="leave">Leave</button> <span id="status">offline</span></p>
<p id="online"></p>
<div id="log"></div>
<form id="form"><input id="text" size="50" autocomplete="off"> <button>Send</button></form>
<script type="module">
// geo_ws.js reconnects, resumes (every message once, in order) and queues sends while offline.
import { GeoSocket } from "SCRIPT_URL";

window.socket = null;
const log = document.getElementById("log");
const status = (text) => { document.getElementById("status").textContent = text; };
const EVENTS = { join: "joined", leave: "left", back: "is back" };
function show(text, cls) {
  const line = document.createElement("div");
  line.textContent = text;
  if (cls) line.className = cls;
  log.appendChild(line);
  log.scrollTop = log.scrollHeight;
}
function connect() {
  const name = document.getElementById("name").value;
  const socket = new GeoSocket(`/chat/ws?name=${encodeURIComponent(name)}`);
  window.socket = socket;
  socket.addEventListener("open", () => status("online"));
  socket.addEventListener("close", (e) => status(`offline (${e.detail.code})`));
  const lost = () => show("(what was sent while this page was away is lost)", "event");
  socket.addEventListener("recovery-failed", lost);
  socket.addEventListener("message", (e) => {
    const m = JSON.parse(e.data);
    const here = document.getElementById("online");
    if (m.event === "online") here.textContent = `here: ${m.names.join(", ")}`;
    else if (m.event) show(`${m.name} ${EVENTS[m.event]}`, "event");
    else show(`${m.from}: ${m.text}`);
  });
}
document.getElementById("join").onclick = () => { if (!window.socket) connect(); };
document.getElementById("leave").onclick = () => {
  const socket = window.socket;
  window.socket = null;
  if (socket) socket.close(1000);  // for good: no reconnect
};
document.getElementById("form").onsubmit = (e) => {
  e.preventDefault();
  const text = document.getElementById("text");
  if (window.socket && text.value) window.socket.send(text.value);  // queued while offline
  text.value = "";
};
</script>
</body></html>
"""

app = Flask(__name__)
app.register_blueprint(chat)
app.register_blueprint(browser_client)  # serves geo_ws.js


@app.get("/")
def page():
    return PAGE.replace("SCRIPT_URL", url_for("geo_ws_client.script"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    run(app, port=parser.parse_args().port)
