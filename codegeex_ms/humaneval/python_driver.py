"""Test driver for one Python sample (copied into the sample directory and run there).

Reads nothing from the project. The process forks first, before it knows anything secret:

* the **child** waits for the parent's go-ahead, then executes ``sample.py`` as ``__main__`` and
  serves calls of its functions over a pipe, answering with the result encoded as tagged JSON;
* the **parent** makes itself non-dumpable (the child cannot read its memory), reads and deletes
  ``harness.json`` (nonce, prompt, test, entry point), lets the child start, then runs the
  dataset's test code in its own namespace: the prompt's helper functions, pristine builtins and
  modules, and the entry point bound to a proxy whose results are decoded into plain built-in
  values. Only when the test code returns does it print the completion marker with the nonce.

Usage: ``python driver.py`` in the sample directory (``sample.py`` and ``harness.json`` there).
"""

import builtins
import json
import os
import signal
import struct
import sys
import traceback

_MAX_MESSAGE = 64 << 20
_MAX_DEPTH = 500
_HEADER = struct.Struct("<Q")


def _read_exact(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the sample's process ended")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _send(fd: int, message) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    data = _HEADER.pack(len(data)) + data
    while data:
        data = data[os.write(fd, data):]


def _receive(fd: int):
    (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size))
    if size > _MAX_MESSAGE:
        raise ValueError(f"the sample's answer is {size} bytes (limit {_MAX_MESSAGE})")
    return json.loads(_read_exact(fd, size))


def _unlimited_int_digits() -> None:
    """Let huge ints be converted to text (Python 3.11+ caps it at 4300 digits by default)."""
    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(0)


def encode(value, depth: int = 0):
    """Tagged JSON of a value (built-in data types; anything else becomes an opaque tag)."""
    if depth > _MAX_DEPTH:
        raise ValueError("value nested too deeply")
    d = depth + 1
    if value is None:
        return ["N"]
    if isinstance(value, bool):
        return ["B", bool(value)]
    if isinstance(value, int):
        return ["I", int.__repr__(value)]
    if isinstance(value, float):
        return ["F", float.hex(value)]
    if isinstance(value, complex):
        return ["C", float.hex(value.real), float.hex(value.imag)]
    if isinstance(value, str):
        return ["S", str.__str__(value)]
    if isinstance(value, (bytes, bytearray)):
        return ["Y", bytes(value).hex()]
    if isinstance(value, list):
        return ["L", [encode(v, d) for v in list.__iter__(value)]]
    if isinstance(value, tuple):
        return ["T", [encode(v, d) for v in tuple.__iter__(value)]]
    if isinstance(value, dict):
        return ["D", [[encode(k, d), encode(v, d)] for k, v in dict.items(value)]]
    if isinstance(value, frozenset):
        return ["G", [encode(v, d) for v in frozenset.__iter__(value)]]
    if isinstance(value, set):
        return ["E", [encode(v, d) for v in set.__iter__(value)]]
    item = getattr(type(value), "item", None)   # numpy scalars
    if type(value).__module__ == "numpy" and callable(item) and getattr(value, "ndim", 1) == 0:
        return encode(item(value), depth)
    return ["O", f"{type(value).__module__}.{type(value).__qualname__}"]


class Opaque:
    """A value the sample returned that is not built-in data: equal only to itself."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str):
        self.type_name = type_name

    def __repr__(self):
        return f"<{self.type_name} object from the sample>"


def decode(data, depth: int = 0):
    """Plain built-in value of tagged JSON (raises ValueError/TypeError on malformed input)."""
    if depth > _MAX_DEPTH or type(data) is not list or not data or type(data[0]) is not str:
        raise ValueError("malformed answer from the sample")
    tag, args, d = data[0], data[1:], depth + 1

    def one(kind):
        if len(args) != 1 or type(args[0]) is not kind:
            raise ValueError(f"malformed {tag} value from the sample")
        return args[0]

    if tag == "N" and not args:
        return None
    if tag == "B":
        return one(bool)
    if tag == "I":
        return int(one(str))
    if tag == "F":
        return float.fromhex(one(str))
    if tag == "C" and len(args) == 2 and all(type(a) is str for a in args):
        return complex(float.fromhex(args[0]), float.fromhex(args[1]))
    if tag == "S":
        return one(str)
    if tag == "Y":
        return bytes.fromhex(one(str))
    if tag == "O":
        return Opaque(one(str))
    items = one(list)
    if tag == "L":
        return [decode(v, d) for v in items]
    if tag == "T":
        return tuple(decode(v, d) for v in items)
    if tag == "E":
        return {decode(v, d) for v in items}
    if tag == "G":
        return frozenset(decode(v, d) for v in items)
    if tag == "D":
        out = {}
        for pair in items:
            if type(pair) is not list or len(pair) != 2:
                raise ValueError("malformed dict from the sample")
            out[decode(pair[0], d)] = decode(pair[1], d)
        return out
    raise ValueError(f"unknown tag {tag!r} from the sample")


def _child(request_fd: int, answer_fd: int) -> None:
    _unlimited_int_digits()
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        with open("sample.py", encoding="utf-8") as f:
            source = f.read()
        exec(compile(source, "sample.py", "exec"), namespace)
    except BaseException as e:  # noqa: BLE001 -- reported to the parent, which fails the run
        traceback.print_exc()
        _send(answer_fd, ["dead", f"the sample raised {type(e).__name__} while loading"])
        os._exit(1)
    _send(answer_fd, ["ready"])
    while True:
        name, args, kwargs = _receive(request_fd)
        try:
            result = namespace[name](*decode(args), **decode(kwargs))
            answer = ["ok", encode(result)]
        except BaseException as e:  # noqa: BLE001 -- any raise is the call's outcome
            answer = ["raise", type(e).__name__, str(e)[:2000]]
        _send(answer_fd, answer)


class SampleProcess:
    """The parent's handle on the child running the sample."""

    def __init__(self, pid: int, request_fd: int, answer_fd: int):
        self.pid, self.request_fd, self.answer_fd = pid, request_fd, answer_fd

    def wait_ready(self) -> None:
        message = _receive(self.answer_fd)
        if message != ["ready"]:
            raise RuntimeError(str(message[1] if len(message) > 1 else message))

    def call(self, name: str, args: tuple, kwargs: dict):
        _send(self.request_fd, [name, encode(list(args)), encode(dict(kwargs))])
        message = _receive(self.answer_fd)
        if type(message) is not list or not message:
            raise ValueError("malformed answer from the sample")
        if message[0] == "ok" and len(message) == 2:
            return decode(message[1])
        if message[0] == "raise" and len(message) == 3:
            kind = getattr(builtins, str(message[1]), None)
            if not (isinstance(kind, type) and issubclass(kind, Exception)):
                kind = RuntimeError
            raise kind(f"{message[1]} in the sample: {message[2]}")
        raise ValueError("malformed answer from the sample")

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except OSError:
            pass


def _make_nondumpable() -> None:
    import ctypes
    if ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE, 0
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def main() -> None:
    go_r, go_w = os.pipe()
    request_r, request_w = os.pipe()
    answer_r, answer_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        for fd in (go_w, request_w, answer_r):
            os.close(fd)
        if os.read(go_r, 1) != b"g":
            os._exit(3)
        os.close(go_r)
        _child(request_r, answer_w)
        os._exit(0)
    for fd in (go_r, request_r, answer_w):
        os.close(fd)
    sample = SampleProcess(pid, request_w, answer_r)
    try:
        _make_nondumpable()
        with open("harness.json", encoding="utf-8") as f:
            spec = json.load(f)
        os.unlink("harness.json")
        _unlimited_int_digits()
        namespace = {"__name__": "__main__", "__builtins__": builtins}
        exec(compile(spec["preamble"], "preamble.py", "exec"), namespace)
        exec(compile(spec["prompt"], "prompt.py", "exec"), namespace)
        os.write(go_w, b"g")  # only now may sample code run
        os.close(go_w)
        sample.wait_ready()
        entry = spec["entry"]

        def proxy(*args, **kwargs):
            return sample.call(entry, args, kwargs)

        proxy.__name__ = entry
        namespace[entry] = proxy
        exec(compile(spec["test"], "test.py", "exec"), namespace)
    except BaseException:  # noqa: BLE001 -- any failure of the tests fails the run
        traceback.print_exc()
        sys.stderr.flush()
        sample.kill()
        os._exit(1)
    sample.kill()
    sys.stdout.flush()
    line = f"\n{spec['marker']}\n".encode()
    while line:
        line = line[os.write(1, line):]
    os._exit(0)


if __name__ == "__main__":
    main()
