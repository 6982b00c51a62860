"""Procedural indoor scenes in the NYUv2 layout: the embedded default dataset.

Every scene is a random room (floor, walls, ceiling, windows, rugs) furnished with objects built
from boxes, spheres and vertical cylinders (beds, sofas, tables with chairs, cabinets, bookshelves
with books, TVs, pictures, small objects), seen by a random pinhole camera. Each pixel's ray is cast
analytically (vectorised numpy), so depth (metres, along the optical axis, like a Kinect) and
normals (unit, camera frame x right / y down / z forward, pointing towards the camera, as in the
real NYUv2 data) are exact. Colour = procedural texture of the surface's material (each of the 13
NYUv2 classes has its own colour range and pattern) x Lambertian shading from a point light plus
ambient light, plus sensor noise.

Realism where the losses and metrics need it: a few unlabelled pixels (-1) on object boundaries and
on small clutter; sensor holes (depth 0 and normal 0) on windows (glass), on random dropout blobs
and on some depth discontinuities.

Scenes are deterministic: scene i of a split depends only on (seed, split, i). A dataset is written
to a temporary folder and renamed into place once complete, with ``meta.json`` describing it.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from . import DatasetInfo, register_dataset
from ._io import atomic_dir
from .nyuv2 import NYUV2_CLASSES, NYUV2_TASKS, NYUv2Dataset

GENERATOR_VERSION = 1
DEFAULT_SIZE = (96, 128)
DEFAULT_TRAIN = 600
DEFAULT_VAL = 200
_SPLIT_CODES = {"train": 0, "val": 1}

(BED, BOOKS, CEILING, CHAIR, FLOOR, FURNITURE, OBJECTS, PICTURE, SOFA, TABLE, TV, WALL,
 WINDOW) = range(13)
UNLABELLED = -1
BOX, SPHERE, CYLINDER = range(3)
ROOM = -1  # primitive id of the room's own surfaces
# Room faces: 0/1 the walls at x=0 / x=X, 2 floor, 3 ceiling, 4/5 the walls at z=0 / z=Z.
_FACE_LABEL = (WALL, WALL, FLOOR, CEILING, WALL, WALL)
# Texture coordinates (u, v) of a surface perpendicular to axis a: local axes _UV_AXES[a].
_UV_AXES = np.array([[2, 1], [0, 2], [0, 1]])


# --------------------------------------------------------------------------------------------
# Scene description
# --------------------------------------------------------------------------------------------

@dataclass
class Material:
    pattern: str
    color: np.ndarray  # base RGB in [0, 1]
    color2: np.ndarray  # secondary RGB (grout, frame, stripes)
    scale: float  # pattern period in metres
    seed: int  # hash seed of the pattern's noise
    params: dict = field(default_factory=dict)
    emissive: bool = False  # windows: lit from outside, not by the lamp


@dataclass
class Prim:
    kind: int  # BOX, SPHERE or CYLINDER (vertical axis)
    center: np.ndarray  # world position
    half: np.ndarray  # half extents (box); (r, r, r) sphere; (r, h/2, r) cylinder
    yaw: float  # rotation about the vertical axis (boxes)
    label: int
    material: int

    def rotation(self) -> np.ndarray:
        return _rot_y(self.yaw)

    def corners(self) -> np.ndarray:
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
        return self.center + (signs * self.half) @ self.rotation().T


@dataclass
class Decal:
    """A rectangle painted on a room face (windows on walls, rugs on the floor)."""

    face: int
    u: tuple[float, float]
    v: tuple[float, float]
    label: int
    material: int


@dataclass
class Camera:
    origin: np.ndarray
    rot: np.ndarray  # columns: camera x (right), y (down), z (forward) in world coordinates
    fx: float
    fy: float
    cx: float
    cy: float
    size: tuple[int, int]

    def ray_dirs(self) -> np.ndarray:
        """World direction of every pixel's ray, scaled so its camera-z component is 1 (H x W x 3)."""
        h, w = self.size
        u = (np.arange(w) + 0.5 - self.cx) / self.fx
        v = (np.arange(h) + 0.5 - self.cy) / self.fy
        cam = np.stack(np.broadcast_arrays(u[None, :], v[:, None], np.ones((1, 1))), axis=-1)
        return cam @ self.rot.T

    def pixel_rect(self, points: np.ndarray) -> tuple[slice, slice] | None:
        """Pixel rectangle covering the projection of ``points``; None if entirely outside."""
        cam = (points - self.origin) @ self.rot
        h, w = self.size
        if (cam[:, 2] < 0.05).any():  # straddles the image plane: test every pixel
            return slice(0, h), slice(0, w)
        x = self.fx * cam[:, 0] / cam[:, 2] + self.cx
        y = self.fy * cam[:, 1] / cam[:, 2] + self.cy
        x0, x1 = max(int(math.floor(x.min())) - 1, 0), min(int(math.ceil(x.max())) + 1, w)
        y0, y1 = max(int(math.floor(y.min())) - 1, 0), min(int(math.ceil(y.max())) + 1, h)
        if x0 >= x1 or y0 >= y1:
            return None
        return slice(y0, y1), slice(x0, x1)


@dataclass
class Scene:
    room: np.ndarray  # (X, height, Z): the room spans [0, X] x [0, height] x [0, Z]
    room_materials: tuple[int, ...]  # per room face
    prims: list[Prim]
    decals: list[Decal]
    materials: list[Material]
    light: np.ndarray
    light_color: np.ndarray
    ambient: float
    camera: Camera


def _rot_y(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1)))


# --------------------------------------------------------------------------------------------
# Materials: one colour range and pattern family per class
# --------------------------------------------------------------------------------------------

def _wood(rng: np.random.Generator, light: bool = False) -> tuple[np.ndarray, np.ndarray]:
    v = rng.uniform(0.55, 0.85) if light else rng.uniform(0.25, 0.6)
    base = _hsv(rng.uniform(0.05, 0.1), rng.uniform(0.45, 0.75), v)
    return base, base * rng.uniform(0.6, 0.8)


def make_material(rng: np.random.Generator, label: int) -> Material:
    """A random material for class ``label`` (-1: clutter)."""
    seed = int(rng.integers(1, 2**31 - 1))
    r = rng.uniform

    def mat(pattern, color, color2=None, scale=1.0, **params) -> Material:
        c2 = color * 0.7 if color2 is None else color2
        return Material(pattern, np.asarray(color, float), np.asarray(c2, float), scale, seed, params)

    if label == BED:
        c = _hsv(r(0.5, 0.7), r(0.05, 0.35), r(0.75, 0.95)) if r() < 0.7 else _hsv(r(), r(0.2, 0.4), r(0.6, 0.9))
        return mat("quilt", c, c * r(0.8, 0.9), r(0.15, 0.3))
    if label == BOOKS:
        palette = [_hsv(r(), r(0.5, 0.9), r(0.3, 0.9)) for _ in range(6)]
        return mat("spines", palette[0], palette[1], r(0.025, 0.045), palette=np.array(palette))
    if label == CEILING:
        c = _hsv(r(0.08, 0.15), r(0.0, 0.08), r(0.85, 0.97))
        return mat("tiles", c, c * 0.85, r(0.5, 0.7), line=0.025)
    if label == CHAIR:
        if r() < 0.6:
            c, c2 = _wood(rng)
            return mat("grain", c, c2, r(0.02, 0.04))
        c = _hsv(r(), r(0.0, 0.6), r(0.1, 0.5))
        return mat("plain", c, c, 0.2)
    if label == FLOOR:
        k = r()
        if k < 0.45:
            c, c2 = _wood(rng, light=r() < 0.5)
            return mat("planks", c, c2, r(0.12, 0.22))
        if k < 0.75:
            c = _hsv(r(0.05, 0.15), r(0.0, 0.25), r(0.45, 0.85))
            return mat("tiles", c, c * 0.65, r(0.3, 0.6), line=0.06)
        c = _hsv(r(), r(0.1, 0.4), r(0.3, 0.6))
        return mat("carpet", c, c * 0.7, r(0.02, 0.05))
    if label == FURNITURE:
        if r() < 0.6:
            c, c2 = _wood(rng, light=r() < 0.5)
        else:
            c = _hsv(r(), r(0.0, 0.12), r(0.7, 0.95))
            c2 = c * 0.6
        return mat("panels", c, c2, r(0.3, 0.6))
    if label == OBJECTS:
        c = _hsv(r(), r(0.6, 1.0), r(0.5, 1.0))
        return mat("dots", c, _hsv(r(), r(0.0, 0.4), r(0.8, 1.0)), r(0.03, 0.08))
    if label == PICTURE:
        palette = np.array([_hsv(r(), r(0.3, 0.9), r(0.3, 1.0)) for _ in range(3)])
        waves = r(-30, 30, size=(2, 3))
        return mat("picture", palette[0], _hsv(r(), r(0.0, 0.3), r(0.05, 0.9)), 0.04, palette=palette,
                   waves=waves)
    if label == SOFA:
        c = _hsv(r(), r(0.3, 0.8), r(0.25, 0.7))
        return mat("fabric", c, c * 0.8, r(0.008, 0.015))
    if label == TABLE:
        if r() < 0.75:
            c, c2 = _wood(rng, light=r() < 0.6)
            return mat("grain", c, c2, r(0.05, 0.09))
        c = _hsv(r(), r(0.0, 0.1), r(0.8, 0.97))
        return mat("plain", c, c, 0.2)
    if label == TV:
        return mat("screen", _hsv(r(0.55, 0.7), r(0.2, 0.5), r(0.12, 0.25)), np.full(3, r(0.02, 0.06)), 0.04)
    if label == WALL:
        c = _hsv(r(0.0, 1.0), r(0.03, 0.25), r(0.7, 0.95))
        if r() < 0.25:
            return mat("stripes", c, c * r(0.85, 0.93), r(0.08, 0.25))
        return mat("paint", c, c * 0.95, r(0.8, 2.0))
    if label == WINDOW:
        m = mat("window", _hsv(r(0.55, 0.62), r(0.15, 0.45), r(0.85, 1.0)), np.full(3, r(0.85, 0.98)), 0.05,
                panes=(int(rng.integers(1, 4)), int(rng.integers(1, 3))))
        m.emissive = True
        return m
    # clutter (unlabelled): anything
    c = _hsv(r(), r(0.0, 1.0), r(0.2, 0.9))
    return mat("carpet" if r() < 0.5 else "plain", c, c * 0.6, r(0.01, 0.03))


def _hash(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic pseudo-random numbers in [0, 1) for integer lattice points."""
    h = (ix.astype(np.int64) * 374761393 + iy.astype(np.int64) * 668265263 + seed * 2246822519) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * 1274126177) & 0xFFFFFFFF
    return ((h ^ (h >> 16)) & 0xFFFFFF) / float(0x1000000)


def _noise(u: np.ndarray, v: np.ndarray, seed: int) -> np.ndarray:
    """Smooth value noise in [0, 1) with unit lattice spacing."""
    iu, iv = np.floor(u), np.floor(v)
    fu, fv = u - iu, v - iv
    fu, fv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)
    a, b = _hash(iu, iv, seed), _hash(iu + 1, iv, seed)
    c, d = _hash(iu, iv + 1, seed), _hash(iu + 1, iv + 1, seed)
    return (a + (b - a) * fu) * (1 - fv) + (c + (d - c) * fu) * fv


def _mix(m: Material, t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)[:, None]
    return m.color * (1 - t) + m.color2 * t


def _frame_mask(u: np.ndarray, v: np.ndarray, m: Material, width: float) -> np.ndarray:
    ex, ey = m.params["extent"]
    return (np.abs(u) > ex - width) | (np.abs(v) > ey - width)


def texture(m: Material, uv: np.ndarray) -> np.ndarray:
    """Albedo (N x 3) of material ``m`` at surface coordinates ``uv`` (N x 2, metres)."""
    u, v = uv[:, 0], uv[:, 1]
    s, seed = m.scale, m.seed
    p = m.pattern
    if p == "plain":
        out = m.color * (0.94 + 0.06 * _noise(u / 0.3, v / 0.3, seed))[:, None]
    elif p == "paint":
        out = m.color * (0.93 + 0.07 * _noise(u / s, v / s, seed) + 0.02 * _noise(u * 40, v * 40, seed + 1))[:, None]
    elif p == "stripes":
        out = _mix(m, (np.floor(u / s) % 2))
    elif p == "planks":
        row = np.floor(v / s)
        along = u + 3.0 * _hash(row, row * 0, seed)
        board = np.floor(along / 1.2)
        seam = ((v / s) % 1 < 0.06) | ((along / 1.2) % 1 < 0.01)
        grain = 0.5 + 0.5 * np.sin(along * 25 + 4 * _noise(along * 2, v * 10, seed))
        out = _mix(m, 0.35 * grain + 0.4 * _hash(board, row, seed + 1))
        out[seam] = m.color2 * 0.6
    elif p == "tiles":
        line = m.params["line"]
        fu, fv = (u / s) % 1, (v / s) % 1
        jitter = 0.92 + 0.08 * _hash(np.floor(u / s), np.floor(v / s), seed)
        out = m.color * jitter[:, None]
        out[(fu < line) | (fv < line)] = m.color2
    elif p == "carpet":
        n = 0.6 * _noise(u / s, v / s, seed) + 0.4 * _noise(u / (4 * s), v / (4 * s), seed + 1)
        out = _mix(m, n)
    elif p == "grain":
        warp = 3.0 * _noise(u * 2, v * 8, seed)
        out = _mix(m, 0.5 + 0.5 * np.sin((u + 0.3 * v) / s + warp))
    elif p == "quilt":
        cell = (np.floor(u / s) + np.floor(v / s)) % 2
        out = _mix(m, 0.6 * cell + 0.2 * _noise(u * 20, v * 20, seed))
    elif p == "fabric":
        weave = 0.5 + 0.5 * np.sin(u / s) * np.sin(v / s)
        out = _mix(m, 0.5 * weave + 0.5 * _noise(u * 6, v * 6, seed))
    elif p == "panels":
        fu = (u / s) % 1
        out = m.color * (0.95 + 0.05 * np.sin(v * 60 + 5 * _noise(u * 3, v * 3, seed)))[:, None]
        out[(fu < 0.03) | (np.abs(fu - 0.5) < 0.015)] = m.color2
    elif p == "dots":
        fu, fv = (u / s) % 1 - 0.5, (v / s) % 1 - 0.5
        out = _mix(m, (fu * fu + fv * fv < 0.09).astype(float))
    elif p == "spines":
        book = np.floor(u / s)
        palette = m.params["palette"]
        out = palette[(_hash(book, book * 0, seed) * len(palette)).astype(int)]
        out = out * (0.8 + 0.2 * ((v * 25) % 1 > 0.2))[:, None]
    elif p == "picture":
        (a1, b1, p1), (a2, b2, p2) = m.params["waves"]
        f = 0.5 + 0.25 * (np.sin(a1 * u + b1 * v + p1) + np.sin(a2 * u + b2 * v + p2))
        f = f + 0.3 * (_noise(u * 8, v * 8, seed) - 0.5)
        pal = m.params["palette"]
        idx = np.clip((f * 3).astype(int), 0, 2)
        out = pal[idx]
        out[_frame_mask(u, v, m, 0.04)] = m.color2
    elif p == "screen":
        ex, ey = m.params["extent"]
        glare = np.clip(1 - np.abs((u / ex + v / ey) - 0.5) * 2, 0, 1) * 0.15
        out = m.color + glare[:, None]
        out[_frame_mask(u, v, m, 0.035)] = m.color2
    elif p == "window":
        ex, ey = m.params["extent"]
        nu, nv = m.params["panes"]
        sky = m.color * (1.0 - 0.25 * (v + ey) / (2 * ey))[:, None]
        clouds = _noise(u * 3, v * 6, seed)
        out = sky * (1 - 0.3 * clouds[:, None]) + 0.3 * clouds[:, None]
        pu = ((u + ex) / (2 * ex) * nu) % 1
        pv = ((v + ey) / (2 * ey) * nv) % 1
        bar = 0.03 / (2 * min(ex, ey))
        out[_frame_mask(u, v, m, 0.05) | (pu < bar) | (pu > 1 - bar) | (pv < bar) | (pv > 1 - bar)] = m.color2
    else:
        raise AssertionError(p)
    return np.clip(out, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Scene layout
# --------------------------------------------------------------------------------------------

class _WallSlots:
    """Free intervals along each wall, so furniture placed against a wall does not overlap."""

    def __init__(self, room: np.ndarray) -> None:
        self.length = {0: room[2], 1: room[2], 5: room[0]}  # wall face -> length along it
        self.used: dict[int, list[tuple[float, float]]] = {f: [] for f in self.length}

    def take(self, rng: np.random.Generator, wall: int, width: float, margin: float = 0.05,
             lo: float = 0.0) -> float | None:
        """Centre (along the wall) of a free slot of ``width``, or None after a few tries."""
        length = self.length[wall]
        for _ in range(8):
            start = rng.uniform(max(lo, margin), max(lo, margin) + max(length - width - 2 * margin - lo, 0))
            end = start + width
            if end > length - margin:
                continue
            if all(end <= a or start >= b for a, b in self.used[wall]):
                self.used[wall].append((start, end))
                return (start + end) / 2
        return None


class _Builder:
    """Collects primitives and materials while a scene is laid out."""

    def __init__(self, rng: np.random.Generator, room: np.ndarray) -> None:
        self.rng = rng
        self.room = room
        self.prims: list[Prim] = []
        self.decals: list[Decal] = []
        self.materials: list[Material] = []
        self.supports: list[tuple[np.ndarray, float, float, float, float]] = []  # centre, yaw, hx, hz, top
        self.floor_slots = _WallSlots(room)
        self.high_slots = _WallSlots(room)

    def material(self, label: int, **params) -> int:
        m = make_material(self.rng, label)
        m.params.update(params)
        self.materials.append(m)
        return len(self.materials) - 1

    def add(self, kind: int, origin: np.ndarray, yaw: float, local: tuple, half: tuple, label: int,
            mat: int) -> None:
        """Add a primitive given in an item's frame (``origin``, ``yaw``) at ``local`` centre."""
        center = origin + _rot_y(yaw) @ np.asarray(local, float)
        self.prims.append(Prim(kind, center, np.asarray(half, float), yaw, label, mat))

    def support(self, origin: np.ndarray, yaw: float, hx: float, hz: float, top: float) -> None:
        self.supports.append((origin, yaw, hx, hz, top))

    def wall_pose(self, wall: int, s: float, depth: float, gap: float = 0.02) -> tuple[np.ndarray, float]:
        """Origin (floor level, centre of the item's footprint) and yaw of an item against ``wall``,
        whose front (local -z) faces into the room."""
        X, _, Z = self.room
        if wall == 5:
            return np.array([s, 0.0, Z - depth / 2 - gap]), 0.0
        if wall == 0:
            return np.array([depth / 2 + gap, 0.0, s]), -math.pi / 2
        return np.array([X - depth / 2 - gap, 0.0, s]), math.pi / 2

    def against_wall(self, width: float, depth: float, lo: float = 0.0) -> tuple[np.ndarray, float] | None:
        wall = int(self.rng.choice([0, 1, 5], p=[0.3, 0.3, 0.4]))
        s = self.floor_slots.take(self.rng, wall, width, lo=lo if wall != 5 else 0.0)
        return None if s is None else self.wall_pose(wall, s, depth)


def _legs(b: _Builder, origin, yaw, hx, hz, height, radius, label, mat) -> None:
    for sx in (-1, 1):
        for sz in (-1, 1):
            b.add(CYLINDER, origin, yaw, (sx * (hx - radius * 1.5), height / 2, sz * (hz - radius * 1.5)),
                  (radius, height / 2, radius), label, mat)


def _bed(b: _Builder, lo: float) -> None:
    r = b.rng.uniform
    w, length, h = r(1.0, 1.8), r(1.9, 2.1), r(0.45, 0.65)
    pose = b.against_wall(w + 0.1, length, lo)
    if pose is None:
        return
    o, yaw = pose
    sheet = b.material(BED)
    frame = b.material(BED) if r() < 0.5 else sheet  # headboards count as bed in NYUv2
    b.add(BOX, o, yaw, (0, h / 2, 0), (w / 2, h / 2, length / 2), BED, sheet)
    b.add(BOX, o, yaw, (0, (h + 0.45) / 2, length / 2 - 0.04), (w / 2 + 0.03, (h + 0.45) / 2, 0.04), BED, frame)
    pillow = b.material(BED)
    for k in range(1 if w < 1.3 else 2):
        x = 0 if w < 1.3 else (k - 0.5) * w / 2
        b.add(BOX, o, yaw, (x, h + 0.06, length / 2 - 0.3), (min(0.3, w / 4), 0.06, 0.18), BED, pillow)


def _sofa(b: _Builder, lo: float) -> None:
    r = b.rng.uniform
    w, d, seat = r(1.5, 2.3), r(0.8, 0.95), r(0.4, 0.48)
    pose = b.against_wall(w, d, lo)
    if pose is None:
        return
    o, yaw = pose
    m = b.material(SOFA)
    b.add(BOX, o, yaw, (0, seat / 2, 0), (w / 2, seat / 2, d / 2), SOFA, m)
    back = r(0.75, 0.9)
    b.add(BOX, o, yaw, (0, back / 2, d / 2 - 0.1), (w / 2, back / 2, 0.1), SOFA, m)
    arm = r(0.55, 0.65)
    for sx in (-1, 1):
        b.add(BOX, o, yaw, (sx * (w / 2 - 0.09), arm / 2, 0), (0.09, arm / 2, d / 2), SOFA, m)
    cushion = b.material(SOFA)
    b.add(BOX, o, yaw, (0, seat + 0.05, -0.05), (w / 2 - 0.2, 0.05, d / 2 - 0.17), SOFA, cushion)


def _cabinet(b: _Builder, lo: float, tall: bool) -> None:
    r = b.rng.uniform
    w, d = r(0.5, 1.6), r(0.35, 0.6)
    h = r(1.5, 2.1) if tall else r(0.45, 1.0)
    pose = b.against_wall(w, d, lo)
    if pose is None:
        return
    o, yaw = pose
    m = b.material(FURNITURE)
    b.add(BOX, o, yaw, (0, h / 2, 0), (w / 2, h / 2, d / 2), FURNITURE, m)
    if not tall:
        b.support(o, yaw, w / 2, d / 2, h)


def _bookshelf(b: _Builder, lo: float) -> None:
    r = b.rng.uniform
    w, d, h = r(0.6, 1.2), r(0.28, 0.35), r(1.0, 2.0)
    pose = b.against_wall(w, d, lo)
    if pose is None:
        return
    o, yaw = pose
    m = b.material(FURNITURE)
    t = 0.02
    b.add(BOX, o, yaw, (0, h / 2, d / 2 - t / 2), (w / 2, h / 2, t / 2), FURNITURE, m)  # back
    for sx in (-1, 1):
        b.add(BOX, o, yaw, (sx * (w / 2 - t / 2), h / 2, 0), (t / 2, h / 2, d / 2), FURNITURE, m)
    shelves = max(2, int(h / 0.36))
    gap = (h - t) / shelves
    for k in range(shelves + 1):
        b.add(BOX, o, yaw, (0, k * gap + t / 2, 0), (w / 2 - t, t / 2, d / 2 - t), FURNITURE, m)
    for k in range(shelves):
        x = -w / 2 + t
        while x < w / 2 - t - 0.08:
            gw = min(r(0.08, 0.3), w / 2 - t - x)
            if r() < 0.85:
                bh = min(r(0.15, 0.3), gap - t - 0.03)
                bd = r(0.15, min(0.24, d - 0.04))
                b.add(BOX, o, yaw, (x + gw / 2, k * gap + t + bh / 2, d / 2 - t - bd / 2 - 0.01),
                      (gw / 2 - 0.002, bh / 2, bd / 2), BOOKS, b.material(BOOKS))
            x += gw + r(0.0, 0.05)


def _table_with_chairs(b: _Builder, lo: float) -> None:
    r = b.rng.uniform
    X, _, Z = b.room
    w, d, h = r(0.8, 1.6), r(0.6, 1.0), r(0.7, 0.78)
    o = np.array([r(0.35, 0.65) * X, 0.0, r(max(lo + 0.8, 0.45 * Z), 0.7 * Z)])
    yaw = r(-0.4, 0.4) + (math.pi / 2 if r() < 0.3 else 0.0)
    m = b.material(TABLE)
    b.add(BOX, o, yaw, (0, h - 0.02, 0), (w / 2, 0.02, d / 2), TABLE, m)
    _legs(b, o, yaw, w / 2, d / 2, h - 0.04, 0.025, TABLE, m)
    b.support(o, yaw, w / 2, d / 2, h)
    chair = b.material(CHAIR)
    sides = [(0, -1), (0, 1), (-1, 0), (1, 0)]
    for k in b.rng.permutation(4)[: int(b.rng.integers(0, 5))]:
        sx, sz = sides[k]
        local = np.array([sx * (w / 2 + 0.2), 0.0, sz * (d / 2 + 0.2)])
        co = o + _rot_y(yaw) @ local
        cyaw = yaw + math.atan2(-sx, -sz) + math.pi + r(-0.2, 0.2)  # front (-z) faces the table
        _chair(b, co, cyaw, chair)


def _chair(b: _Builder, o: np.ndarray, yaw: float, m: int) -> None:
    r = b.rng.uniform
    s, seat = r(0.4, 0.48), r(0.43, 0.48)
    b.add(BOX, o, yaw, (0, seat, 0), (s / 2, 0.025, s / 2), CHAIR, m)
    _legs(b, o, yaw, s / 2, s / 2, seat - 0.025, 0.018, CHAIR, m)
    back = r(0.35, 0.5)
    b.add(BOX, o, yaw, (0, seat + back / 2, s / 2 - 0.015), (s / 2, back / 2, 0.015), CHAIR, m)


def _wall_item(b: _Builder, label: int, width: float, height: float, bottom: float, depth: float,
               lo: float) -> None:
    wall = int(b.rng.choice([0, 1, 5], p=[0.3, 0.3, 0.4]))
    s = b.high_slots.take(b.rng, wall, width + 0.2, lo=lo if wall != 5 else 0.0)
    if s is None:
        return
    o, yaw = b.wall_pose(wall, s, depth, gap=0.0)
    if label == WINDOW:
        u = (s - width / 2, s + width / 2)
        b.decals.append(Decal(wall, u, (bottom, bottom + height), WINDOW,
                              b.material(WINDOW, extent=(width / 2, height / 2))))
        return
    m = b.material(label, extent=(width / 2, height / 2))
    b.add(BOX, o, yaw, (0, bottom + height / 2, 0), (width / 2, height / 2, depth / 2), label, m)


def _small_object(b: _Builder, label: int, base: np.ndarray, mat: int) -> None:
    r = b.rng.uniform
    k = r()
    if k < 0.3:
        rad = r(0.05, 0.15)
        b.prims.append(Prim(SPHERE, base + [0, rad, 0], np.full(3, rad), 0.0, label, mat))
    elif k < 0.7:
        rad, h = r(0.04, 0.15), r(0.1, 0.5)
        b.prims.append(Prim(CYLINDER, base + [0, h / 2, 0], np.array([rad, h / 2, rad]), 0.0, label, mat))
    else:
        half = np.array([r(0.05, 0.15), r(0.04, 0.12), r(0.05, 0.15)])
        b.prims.append(Prim(BOX, base + [0, half[1], 0], half, r(0, math.pi), label, mat))


def _on_support(b: _Builder) -> np.ndarray | None:
    if not b.supports:
        return None
    o, yaw, hx, hz, top = b.supports[int(b.rng.integers(len(b.supports)))]
    local = np.array([b.rng.uniform(-0.8, 0.8) * hx, top, b.rng.uniform(-0.7, 0.7) * hz])
    return o + _rot_y(yaw) @ local


def _floor_spot(b: _Builder, lo: float) -> np.ndarray:
    X, _, Z = b.room
    return np.array([b.rng.uniform(0.2, X - 0.2), 0.0, b.rng.uniform(lo + 0.6, Z - 0.2)])


def layout_scene(rng: np.random.Generator, size: tuple[int, int]) -> Scene:
    """A random furnished room and a camera looking into it."""
    r = rng.uniform
    room = np.array([r(3.0, 5.0), r(2.4, 3.0), r(3.2, 5.5)])
    b = _Builder(rng, room)
    wall = b.material(WALL)
    room_mats = (wall, wall, b.material(FLOOR), b.material(CEILING), wall, wall)
    camera = _camera(rng, room, size)
    lo = float(camera.origin[2])  # keep furniture in front of the camera's plane along the side walls

    if r() < 0.35:
        _bed(b, lo)
    if r() < 0.45:
        _sofa(b, lo)
    for _ in range(int(rng.integers(2, 6))):
        _cabinet(b, lo, tall=r() < 0.4)
    for _ in range(int(rng.integers(0, 3))):
        _bookshelf(b, lo)
    if r() < 0.65:
        _table_with_chairs(b, lo)
    for _ in range(int(rng.integers(0, 3))):
        _wall_item(b, WINDOW, r(0.7, 1.5), r(0.9, 1.4), r(0.8, 1.1), 0.0, lo)
    if r() < 0.5:
        _wall_item(b, TV, r(0.9, 1.5), r(0.55, 0.85), r(0.8, 1.2), r(0.04, 0.08), lo)
    for _ in range(int(rng.integers(1, 5))):
        _wall_item(b, PICTURE, r(0.4, 1.1), r(0.35, 0.8), r(1.1, 1.6), r(0.02, 0.04), lo)
    if r() < 0.35:  # a rug: floor class, another appearance
        x0, z0 = r(0.3, room[0] - 2.0), r(lo + 0.5, room[2] - 2.0)
        rug = b.material(FLOOR)
        b.materials[rug].pattern = "carpet"
        b.decals.append(Decal(2, (x0, x0 + r(1.0, 2.0)), (z0, z0 + r(1.0, 2.0)), FLOOR, rug))
    for _ in range(int(rng.integers(3, 10))):
        spot = _on_support(b) if r() < 0.7 else None
        _small_object(b, OBJECTS, _floor_spot(b, lo) if spot is None else spot, b.material(OBJECTS))
    if b.supports and r() < 0.5:  # a stack of books on a table or cabinet
        base = _on_support(b)
        for k in range(int(rng.integers(1, 4))):
            half = np.array([r(0.08, 0.15), r(0.01, 0.025), r(0.11, 0.16)])
            b.prims.append(Prim(BOX, base + [0, half[1], 0], half, r(0, math.pi), BOOKS, b.material(BOOKS)))
            base = base + [0, 2 * half[1], 0]
    for _ in range(int(rng.integers(0, 4))):  # small unlabelled clutter
        spot = _on_support(b) if r() < 0.5 else None
        _small_object(b, UNLABELLED, _floor_spot(b, lo) if spot is None else spot, b.material(UNLABELLED))

    light = np.array([r(0.25, 0.75) * room[0], room[1] - 0.15, r(0.3, 0.8) * room[2]])
    light_color = _hsv(r(0.05, 0.6), r(0.0, 0.15), 1.0)
    return Scene(room, room_mats, b.prims, b.decals, b.materials, light, light_color, r(0.3, 0.5), camera)


def _camera(rng: np.random.Generator, room: np.ndarray, size: tuple[int, int]) -> Camera:
    r = rng.uniform
    h, w = size
    origin = np.array([r(0.3, 0.7) * room[0], r(1.0, 1.6), r(0.2, 0.8)])
    yaw, pitch, roll = r(-0.6, 0.6), r(-0.35, 0.12), r(-0.05, 0.05)
    fwd = np.array([math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)])
    right = np.cross(fwd, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    c, s = math.cos(roll), math.sin(roll)
    right, down = c * right + s * down, -s * right + c * down
    f = (w / 2) / math.tan(math.radians(r(55, 65)) / 2)
    return Camera(origin, np.stack([right, down, fwd], axis=1), f, f, w / 2, h / 2, size)


# --------------------------------------------------------------------------------------------
# Ray casting
# --------------------------------------------------------------------------------------------

def _hit_room(room: np.ndarray, o: np.ndarray, d: np.ndarray):
    """Exit point of rays from inside the room box: t, face, world normal, uv."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t_axis = np.where(d > 0, (room - o) / d, -o / d)
    t_axis = np.where(np.isfinite(t_axis) & (t_axis > 0), t_axis, np.inf)
    axis = t_axis.argmin(-1)
    t = np.take_along_axis(t_axis, axis[:, None], -1)[:, 0]
    positive = np.take_along_axis(d, axis[:, None], -1)[:, 0] > 0
    face = np.array([0, 2, 4])[axis] + positive
    normal = np.zeros_like(d)
    np.put_along_axis(normal, axis[:, None], np.where(positive, -1.0, 1.0)[:, None], -1)
    p = o + t[:, None] * d
    uv = np.take_along_axis(p, _UV_AXES[axis], -1)
    return t, face, normal, uv


def _hit_box(prim: Prim, o: np.ndarray, d: np.ndarray):
    rot = prim.rotation()
    ol = (o - prim.center) @ rot
    dl = d @ rot
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / dl
        t1, t2 = (-prim.half - ol) * inv, (prim.half - ol) * inv
    tmin, tmax = np.fmin(t1, t2), np.fmax(t1, t2)
    axis = tmin.argmax(-1)
    tnear = np.take_along_axis(tmin, axis[:, None], -1)[:, 0]
    tfar = tmax.min(-1)
    t = np.where((tnear <= tfar) & (tnear > 1e-6), tnear, np.inf)
    sign = -np.sign(np.take_along_axis(dl, axis[:, None], -1))
    nl = np.zeros_like(dl)
    np.put_along_axis(nl, axis[:, None], sign, -1)
    p = ol + np.where(np.isfinite(t), t, 0)[:, None] * dl
    uv = np.take_along_axis(p, _UV_AXES[axis], -1)
    return t, nl @ rot.T, uv


def _hit_sphere(prim: Prim, o: np.ndarray, d: np.ndarray):
    r = prim.half[0]
    oc = o - prim.center
    a = (d * d).sum(-1)
    bh = d @ oc
    disc = bh * bh - a * (oc @ oc - r * r)
    with np.errstate(invalid="ignore"):
        t = (-bh - np.sqrt(disc)) / a
    t = np.where((disc > 0) & (t > 1e-6), t, np.inf)
    p = oc + np.where(np.isfinite(t), t, 0)[:, None] * d
    n = p / r
    uv = np.stack([np.arctan2(p[:, 2], p[:, 0]) * r, p[:, 1]], -1)
    return t, n, uv


def _hit_cylinder(prim: Prim, o: np.ndarray, d: np.ndarray):
    r, hh = prim.half[0], prim.half[1]
    oc = o - prim.center
    a = d[:, 0] ** 2 + d[:, 2] ** 2
    bh = d[:, 0] * oc[0] + d[:, 2] * oc[2]
    disc = bh * bh - a * (oc[0] ** 2 + oc[2] ** 2 - r * r)
    with np.errstate(invalid="ignore", divide="ignore"):
        t_side = (-bh - np.sqrt(disc)) / a
        y_side = oc[1] + t_side * d[:, 1]
        t_side = np.where((disc > 0) & (t_side > 1e-6) & (np.abs(y_side) <= hh), t_side, np.inf)
        cap = hh if oc[1] > 0 else -hh  # the only cap an outside camera can see
        t_cap = (cap - oc[1]) / d[:, 1]
        xc, zc = oc[0] + t_cap * d[:, 0], oc[2] + t_cap * d[:, 2]
        t_cap = np.where((t_cap > 1e-6) & (xc * xc + zc * zc <= r * r) & (abs(oc[1]) > hh), t_cap, np.inf)
    on_cap = t_cap < t_side
    t = np.minimum(t_side, t_cap)
    p = oc + np.where(np.isfinite(t), t, 0)[:, None] * d
    n = np.where(on_cap[:, None], [0.0, 1.0 if cap > 0 else -1.0, 0.0], p * [1 / r, 0, 1 / r])
    uv = np.where(on_cap[:, None], p[:, [0, 2]], np.stack([np.arctan2(p[:, 2], p[:, 0]) * r, p[:, 1]], -1))
    return t, n, uv


_HIT = {BOX: _hit_box, SPHERE: _hit_sphere, CYLINDER: _hit_cylinder}


def cast(scene: Scene) -> dict[str, np.ndarray]:
    """Per pixel: ray direction, depth t (camera z), world normal, uv, primitive id (ROOM = -1) and
    room face of the nearest surface."""
    cam = scene.camera
    h, w = cam.size
    dirs = cam.ray_dirs()
    t, face, normal, uv = _hit_room(scene.room, cam.origin, dirs.reshape(-1, 3))
    buf = {
        "t": t.reshape(h, w), "normal": normal.reshape(h, w, 3), "uv": uv.reshape(h, w, 2),
        "prim": np.full((h, w), ROOM), "face": face.reshape(h, w), "dirs": dirs,
    }
    for k, prim in enumerate(scene.prims):
        rect = cam.pixel_rect(prim.corners())
        if rect is None:
            continue
        sub = dirs[rect]
        tk, nk, uvk = _HIT[prim.kind](prim, cam.origin, sub.reshape(-1, 3))
        tk = tk.reshape(sub.shape[:2])
        closer = tk < buf["t"][rect]
        if not closer.any():
            continue
        buf["t"][rect][closer] = tk[closer]
        buf["normal"][rect][closer] = nk.reshape(sub.shape)[closer]
        buf["uv"][rect][closer] = uvk.reshape(*sub.shape[:2], 2)[closer]
        buf["prim"][rect][closer] = k
    return buf


# --------------------------------------------------------------------------------------------
# Rendering one scene to arrays
# --------------------------------------------------------------------------------------------

def render(scene: Scene, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Arrays in the NYUv2 layout: image HxWx3, label HxW, depth HxWx1, normal HxWx3 (float32)."""
    cam = scene.camera
    h, w = cam.size
    buf = cast(scene)
    prim, face, uv = buf["prim"], buf["face"], buf["uv"]
    prim_label = np.array([p.label for p in scene.prims] + [0], np.int64)
    prim_mat = np.array([p.material for p in scene.prims] + [0], np.int64)
    on_room = prim == ROOM
    label = np.where(on_room, np.asarray(_FACE_LABEL)[face], prim_label[prim])
    mat = np.where(on_room, np.asarray(scene.room_materials)[face], prim_mat[prim])
    for decal in scene.decals:
        inside = (on_room & (face == decal.face) & (uv[..., 0] >= decal.u[0]) & (uv[..., 0] <= decal.u[1])
                  & (uv[..., 1] >= decal.v[0]) & (uv[..., 1] <= decal.v[1]))
        label[inside] = decal.label
        mat[inside] = decal.material
        uv[inside] -= [(decal.u[0] + decal.u[1]) / 2, (decal.v[0] + decal.v[1]) / 2]

    # Surface colour: texture x (ambient + Lambert from the lamp); windows glow.
    albedo = np.zeros((h, w, 3))
    emissive = np.zeros((h, w), bool)
    for m in np.unique(mat):
        sel = mat == m
        material = scene.materials[m]
        albedo[sel] = texture(material, uv[sel])
        emissive[sel] = material.emissive
    points = cam.origin + buf["t"][..., None] * buf["dirs"]
    to_light = scene.light - points
    dist = np.linalg.norm(to_light, axis=-1)
    lambert = np.clip((buf["normal"] * to_light).sum(-1) / dist, 0, None) / (1 + (dist / 4.0) ** 2)
    shade = scene.ambient + (1.15 - scene.ambient) * lambert
    image = albedo * shade[..., None] * scene.light_color
    image[emissive] = albedo[emissive]
    image *= rng.uniform(0.85, 1.15)  # exposure
    image += rng.normal(0.0, 0.012, image.shape)

    normal = buf["normal"] @ cam.rot  # world -> camera frame
    depth = buf["t"].copy()
    label = _unlabel_boundaries(label, rng)
    hole = (label == WINDOW) | _dropout(rng, (h, w)) | _edge_holes(depth, rng)
    depth[hole] = 0.0
    normal[hole] = 0.0
    return {
        "image": np.clip(image, 0, 1).astype(np.float32),
        "label": label.astype(np.float32),
        "depth": depth.astype(np.float32)[..., None],
        "normal": normal.astype(np.float32),
    }


def _unlabel_boundaries(label: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """Mark some pixels on class boundaries unlabelled, as annotators leave thin gaps."""
    edge = np.zeros(label.shape, bool)
    dx, dy = label[:, 1:] != label[:, :-1], label[1:, :] != label[:-1, :]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    out = label.copy()
    out[edge & (rng.random(label.shape) < p)] = UNLABELLED
    return out


def _dropout(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A few elliptical blobs of missing depth (sensor holes)."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    mask = np.zeros(size, bool)
    for _ in range(rng.poisson(1.0)):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.02, 0.08) * h, rng.uniform(0.02, 0.08) * w
        mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    return mask


def _edge_holes(depth: np.ndarray, rng: np.random.Generator, p: float = 0.3) -> np.ndarray:
    """Drop some pixels on the far side of depth discontinuities, like a structured-light sensor."""
    far = np.zeros(depth.shape, bool)
    jump_x = np.abs(depth[:, 1:] - depth[:, :-1]) > 0.1 * np.minimum(depth[:, 1:], depth[:, :-1])
    far[:, 1:] |= jump_x & (depth[:, 1:] > depth[:, :-1])
    far[:, :-1] |= jump_x & (depth[:, :-1] > depth[:, 1:])
    return far & (rng.random(depth.shape) < p)


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of scene ``index`` of ``split``: independent of every other scene."""
    return np.random.default_rng([GENERATOR_VERSION, seed, _SPLIT_CODES[split], index])


def generate_scene(seed: int, split: str, index: int, size: tuple[int, int]) -> dict[str, np.ndarray]:
    rng = scene_rng(seed, split, index)
    return render(layout_scene(rng, size), rng)


# --------------------------------------------------------------------------------------------
# Writing datasets
# --------------------------------------------------------------------------------------------

def _check_counts(train: int, val: int, size: tuple[int, int]) -> None:
    if train < 0 or val < 0 or train + val == 0:
        raise UserError(f"options --train/--val must be >= 0 and not both 0; got {train}/{val}")
    if min(size) < 8:
        raise UserError(f"option --size must be at least 8x8; got {size[0]}x{size[1]}")


def generate_dataset(out: str | Path, train: int, val: int, size: tuple[int, int] = DEFAULT_SIZE,
                     seed: int = 0, overwrite: bool = False, progress: bool = False) -> dict:
    """Render ``train`` + ``val`` scenes into ``out`` in the NYUv2 layout; returns the metadata.

    The folder appears only when complete (written to a temporary sibling, then renamed), with a
    ``meta.json`` recording the generator version, seed, size, counts and generation time.
    """
    _check_counts(train, val, size)
    start = time.perf_counter()
    live = sys.stderr.isatty()  # a running count only on a terminal, not in logs
    with atomic_dir(Path(out), overwrite=overwrite) as tmp:
        for split, count in (("train", train), ("val", val)):
            for key in ("image", "label", "depth", "normal"):
                (tmp / split / key).mkdir(parents=True)
            for i in range(count):
                for key, arr in generate_scene(seed, split, i, size).items():
                    np.save(tmp / split / key / f"{i}.npy", arr)
                if progress and live and (i + 1) % 50 == 0:
                    print(f"\r{split}: {i + 1}/{count} scenes", end="", file=sys.stderr, flush=True)
            if progress and count:
                print(f"\r{split}: {count}/{count} scenes", file=sys.stderr)
        meta = {
            "generator": "densemtl.data.synthetic", "version": GENERATOR_VERSION, "seed": seed,
            "size": list(size), "counts": {"train": train, "val": val}, "classes": list(NYUV2_CLASSES),
            "seconds": round(time.perf_counter() - start, 2),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def default_cache_dir() -> Path:
    """``$DENSEMTL_CACHE`` or ``~/.cache/densemtl``."""
    return Path(os.environ.get("DENSEMTL_CACHE") or Path.home() / ".cache" / "densemtl")


def _matches(folder: Path, train: int, val: int, size: tuple[int, int], seed: int) -> bool:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return (meta.get("version") == GENERATOR_VERSION and meta.get("seed") == seed
            and meta.get("size") == list(size) and meta.get("counts") == {"train": train, "val": val})


def ensure_default_dataset(cache_dir: str | Path | None = None, train: int = DEFAULT_TRAIN,
                           val: int = DEFAULT_VAL, size: tuple[int, int] = DEFAULT_SIZE, seed: int = 0,
                           progress: bool = True) -> Path:
    """Path of the synthetic dataset with these settings, generating it into the cache on first use."""
    _check_counts(train, val, size)
    folder = Path(cache_dir or default_cache_dir()) / (
        f"synthetic-v{GENERATOR_VERSION}-{size[0]}x{size[1]}-n{train}-{val}-s{seed}")
    if _matches(folder, train, val, size, seed):
        return folder
    if progress:
        print(f"generating {train}+{val} synthetic scenes at {size[0]}x{size[1]} into {folder}",
              file=sys.stderr)
    try:
        generate_dataset(folder, train, val, size, seed, overwrite=folder.exists(), progress=progress)
    except OSError:
        if not _matches(folder, train, val, size, seed):  # not just another process finishing first
            raise
    return folder


@register_dataset("synthetic", description="procedural indoor scenes in the NYUv2 layout (default 96x128)")
class SyntheticDataset(NYUv2Dataset):
    """The NYUv2 loader on procedurally generated rooms; ``root=None`` uses the cached default."""

    @classmethod
    def info_for(cls) -> DatasetInfo:
        return DatasetInfo(variant="synthetic", tasks=NYUV2_TASKS, num_classes=len(NYUV2_CLASSES),
                           class_names=NYUV2_CLASSES, size=DEFAULT_SIZE, derived_tasks=("edge",))

    def default_root(self) -> Path:
        return ensure_default_dataset()
