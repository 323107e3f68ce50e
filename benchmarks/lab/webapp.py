"""The lab's small web application: pages, forms, a login, uploads, and one deliberately
injectable query for sqlmap. Lab-only: it listens inside a network namespace with no route out.

    python3 webapp.py --db app.sqlite --host 127.0.0.1 --port 8000 [--uploads DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sqlite3

from flask import Flask, g, make_response, redirect, request

PRODUCTS = ["sensor", "gateway", "router", "switch", "camera", "badge", "lamp", "valve",
            "meter", "pump", "relay", "display", "keypad", "printer", "scanner", "drive"]
USERS = [("alice", "correct-horse-7"), ("bob", "blue-sky-42"), ("carol", "tea-pot-99"),
         ("dave", "river-stone-3"), ("erin", "maple-leaf-8")]


def create_db(path: str, seed: int = 7) -> None:
    rng = random.Random(seed)
    con = sqlite3.connect(path)
    con.executescript("""
        DROP TABLE IF EXISTS items; DROP TABLE IF EXISTS users; DROP TABLE IF EXISTS notes;
        CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL, stock INTEGER,
                            description TEXT);
        CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, pwhash TEXT, email TEXT);
        CREATE TABLE notes (id INTEGER PRIMARY KEY, author TEXT, body TEXT);
    """)
    for i in range(1, 201):
        name = f"{rng.choice(PRODUCTS)}-{rng.randint(100, 999)}"
        con.execute("INSERT INTO items VALUES (?,?,?,?,?)",
                    (i, name, round(rng.uniform(3, 900), 2), rng.randint(0, 500),
                     " ".join(rng.choice(PRODUCTS) for _ in range(rng.randint(4, 30)))))
    for i, (u, pw) in enumerate(USERS, 1):
        con.execute("INSERT INTO users VALUES (?,?,?,?)",
                    (i, u, hashlib.sha256(pw.encode()).hexdigest(), f"{u}@lab.test"))
    con.commit()
    con.close()


def make_app(db_path: str, uploads: str) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 64 << 20

    def db() -> sqlite3.Connection:
        if "db" not in g:
            g.db = sqlite3.connect(db_path)
        return g.db

    @app.teardown_appcontext
    def _close(_exc):
        con = g.pop("db", None)
        if con is not None:
            con.close()

    def page(title: str, body: str) -> str:
        nav = " | ".join(f'<a href="/app/{p}">{p}</a>' for p in
                         ("", "items", "search", "login", "contact", "notes", "upload"))
        return (f"<!doctype html><html><head><title>{title}</title></head><body>"
                f"<nav>{nav}</nav><h1>{title}</h1>{body}</body></html>")

    @app.route("/")
    def index():
        return page("Lab shop", "<p>Welcome to the lab shop.</p>")

    @app.route("/items")
    def items():
        rows = db().execute("SELECT id, name, price FROM items ORDER BY id LIMIT 50").fetchall()
        lis = "".join(f'<li><a href="/app/item?id={i}">{n}</a> {p}</li>' for i, n, p in rows)
        return page("Items", f"<ul>{lis}</ul>")

    @app.route("/item")
    def item():
        # Deliberately injectable (the lab's sqlmap target): the id is pasted into the SQL.
        item_id = request.args.get("id", "1")
        try:
            rows = db().execute(
                f"SELECT id, name, price, stock, description FROM items WHERE id = {item_id}"
            ).fetchall()
        except sqlite3.Error as e:
            return page("Error", f"<pre>{e}</pre>"), 500
        body = "".join(f"<h2>{r[1]}</h2><p>{r[2]} ({r[3]} in stock)</p><p>{r[4]}</p>"
                       for r in rows)
        return page("Item", body or "<p>not found</p>")

    @app.route("/search")
    def search():
        q = request.args.get("q", "")
        rows = db().execute("SELECT id, name FROM items WHERE name LIKE ? LIMIT 20",
                            (f"%{q}%",)).fetchall()
        lis = "".join(f'<li><a href="/app/item?id={i}">{n}</a></li>' for i, n in rows)
        form = '<form action="/app/search"><input name="q"><button>Search</button></form>'
        return page("Search", form + f"<ul>{lis}</ul>")

    @app.route("/login", methods=["GET", "POST"])
    def login():
        if request.method == "GET":
            return page("Login", '<form method="post"><input name="user"><input name="pw" '
                                 'type="password"><button>Login</button></form>')
        user, pw = request.form.get("user", ""), request.form.get("pw", "")
        row = db().execute("SELECT pwhash FROM users WHERE name = ?", (user,)).fetchone()
        if row and row[0] == hashlib.sha256(pw.encode()).hexdigest():
            resp = make_response(redirect("/app/notes"))
            resp.set_cookie("session", hashlib.sha1(user.encode()).hexdigest())
            return resp
        return page("Login", "<p>wrong user or password</p>"), 403

    @app.route("/notes", methods=["GET", "POST"])
    def notes():
        if request.method == "POST":
            db().execute("INSERT INTO notes (author, body) VALUES (?, ?)",
                         (request.form.get("author", "anon"), request.form.get("body", "")))
            db().commit()
        rows = db().execute("SELECT author, body FROM notes ORDER BY id DESC LIMIT 10").fetchall()
        return page("Notes", "".join(f"<p><b>{a}</b>: {b}</p>" for a, b in rows))

    @app.route("/contact", methods=["GET", "POST"])
    def contact():
        if request.method == "POST":
            return page("Thanks", f"<p>Thanks {request.form.get('name', '')}</p>")
        return page("Contact", '<form method="post"><input name="name"><input name="email">'
                               '<textarea name="message"></textarea><button>Send</button></form>')

    @app.route("/upload", methods=["GET", "POST"])
    def upload():
        if request.method == "POST":
            total = 0
            for f in request.files.values():
                data = f.read()
                total += len(data)
                name = hashlib.sha1(data).hexdigest()[:16]
                with open(os.path.join(uploads, name), "wb") as out:
                    out.write(data)
            return page("Uploaded", f"<p>{total} bytes</p>")
        return page("Upload", '<form method="post" enctype="multipart/form-data">'
                              '<input type="file" name="file"><button>Upload</button></form>')

    @app.route("/api/status")
    def status():
        return {"ok": True, "items": 200}

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--uploads", default=None)
    ap.add_argument("--create", action="store_true", help="(re)create the database and exit")
    args = ap.parse_args()
    if args.create or not os.path.exists(args.db):
        create_db(args.db)
        if args.create:
            return
    uploads = args.uploads or os.path.join(os.path.dirname(os.path.abspath(args.db)), "uploads")
    os.makedirs(uploads, exist_ok=True)
    make_app(args.db, uploads).run(host=args.host, port=args.port, threaded=True)


if __name__ == "__main__":
    main()
