"""A chat room: a page served by the app, a WebSocket mounted by a Blueprint.

    python examples/chat.py [--port 8000]      then open http://127.0.0.1:8000/
    geo-ws run examples.chat:app

Every message is broadcast to every chat client as ``{"from": NAME, "text": MSG}``;
joins and leaves as ``{"event": "join" | "leave", "name": NAME}``, and who is online,
after each change, as ``{"event": "online", "names": [NAME, ...]}`` (presence: with a
Redis broker, across every worker; a crashed worker's clients drop out by themselves).
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402

from flask import Blueprint, Flask  # noqa: E402

from geo_ws import WebSocket, run  # noqa: E402

chat = Blueprint("chat", __name__, url_prefix="/chat")
room = WebSocket(chat, "/ws")


def name_of(ws):
    return ws.query_params.get("name") or "anonymous"


@room.on("connect")
def join(ws):
    ws.sync_broadcast(json.dumps({"event": "join", "name": name_of(ws)}))
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
<script>
let socket = null;
const log = document.getElementById("log");
function show(text, cls) {
  const line = document.createElement("div");
  line.textContent = text;
  if (cls) line.className = cls;
  log.appendChild(line);
  log.scrollTop = log.scrollHeight;
}
function connect() {
  const name = document.getElementById("name").value;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/chat/ws?name=${encodeURIComponent(name)}`);
  socket = ws;
  ws.onopen = () => { document.getElementById("status").textContent = "online"; };
  ws.onclose = (e) => {
    document.getElementById("status").textContent = `offline (${e.code})`;
    // Lost, or the server restarted: reconnect, unless Leave was clicked.
    setTimeout(() => { if (socket === ws) connect(); }, 1000);
  };
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    const here = document.getElementById("online");
    if (m.event === "online") here.textContent = `here: ${m.names.join(", ")}`;
    else if (m.event) show(`${m.name} ${m.event === "join" ? "joined" : "left"}`, "event");
    else show(`${m.from}: ${m.text}`);
  };
}
document.getElementById("join").onclick = () => { if (!socket) connect(); };
document.getElementById("leave").onclick = () => {
  const ws = socket;
  socket = null;
  if (ws) ws.close(1000);
};
document.getElementById("form").onsubmit = (e) => {
  e.preventDefault();
  const text = document.getElementById("text");
  if (socket && socket.readyState === WebSocket.OPEN && text.value) socket.send(text.value);
  text.value = "";
};
</script>
</body></html>
"""

app = Flask(__name__)
app.register_blueprint(chat)


@app.get("/")
def page():
    return PAGE


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    run(app, port=parser.parse_args().port)
