"""A small generated detection set: coloured shapes on noisy backgrounds, written in both the PASCAL
VOC layout (XML per image) and the COCO layout (one JSON), so the two real readers can be tested
and a detector trained end to end without any download.

Boxes are integer pixel edges [x1, x2) x [y1, y2). VOC XML stores them 1-based and inclusive
(xmin = x1 + 1, xmax = x2); COCO stores [x1, y1, x2 - x1, y2 - y1]; both read back as x1, y1, x2, y2.
"""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree as ET

import torch
from PIL import Image, ImageDraw

SHAPE_CLASSES = ("square", "circle", "triangle")
_COLOURS = {"square": (220, 40, 40), "circle": (40, 200, 60), "triangle": (50, 80, 230)}


def _draw(draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int]) -> None:
    x1, y1, x2, y2 = box
    # PIL's rectangle/ellipse include their right/bottom edge: draw to x2 - 1 so pixels span [x1, x2).
    if kind == "square":
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=_COLOURS[kind])
    elif kind == "circle":
        draw.ellipse((x1, y1, x2 - 1, y2 - 1), fill=_COLOURS[kind])
    else:
        draw.polygon([((x1 + x2 - 1) / 2, y1), (x1, y2 - 1), (x2 - 1, y2 - 1)], fill=_COLOURS[kind])


def make_image(g: torch.Generator, size: int, max_objects: int = 3) -> tuple[Image.Image, list[tuple]]:
    """One image and its objects [(class, (x1, y1, x2, y2)), ...]; objects do not overlap."""
    background = torch.randint(60, 180, (3,), generator=g)
    noise = torch.randint(-25, 26, (size, size, 3), generator=g)
    pixels = (background + noise).clamp(0, 255).to(torch.uint8).numpy()
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    objects: list[tuple] = []
    count = int(torch.randint(1, max_objects + 1, (1,), generator=g))
    for _ in range(20 * count):  # rejection sampling for non-overlapping boxes
        if len(objects) == count:
            break
        side = int(torch.randint(size // 6, size // 2, (1,), generator=g))
        w = side
        h = max(8, int(side * float(torch.empty(1).uniform_(0.7, 1.3, generator=g))))
        h = min(h, size - 2)
        x1 = int(torch.randint(0, size - w, (1,), generator=g))
        y1 = int(torch.randint(0, size - h, (1,), generator=g))
        box = (x1, y1, x1 + w, y1 + h)
        if any(not (box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1]) for _, b in objects):
            continue
        kind = SHAPE_CLASSES[int(torch.randint(0, len(SHAPE_CLASSES), (1,), generator=g))]
        _draw(draw, kind, box)
        objects.append((kind, box))
    return image, objects


def _voc_xml(name: str, size: int, objects: list[tuple], difficult: list[bool]) -> ET.ElementTree:
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = f"{name}.jpg"
    sz = ET.SubElement(root, "size")
    for tag, v in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(sz, tag).text = str(v)
    for (kind, (x1, y1, x2, y2)), diff in zip(objects, difficult):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = kind
        ET.SubElement(obj, "difficult").text = "1" if diff else "0"
        bb = ET.SubElement(obj, "bndbox")
        for tag, v in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(bb, tag).text = str(v)
    return ET.ElementTree(root)


def write_shapes(
    root: str | Path,
    splits: dict[str, int],
    *,
    size: int = 96,
    seed: int = 0,
    year: str = "2007",
    difficult_every: int = 0,
) -> Path:
    """Generate `splits` ({"train": 200, "test": 50}) under `root` in both layouts:

      root/VOCdevkit/VOC{year}/{JPEGImages,Annotations,ImageSets/Main/<split>.txt}
      root/<split>/*.jpg + root/annotations/instances_<split>.json        (COCO)

    `difficult_every=k` marks every k-th object difficult (VOC) / crowd (COCO). Idempotent.
    """
    root = Path(root)
    voc = root / "VOCdevkit" / f"VOC{year}"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SHAPE_CLASSES)]
    for s, (split, count) in enumerate(splits.items()):
        g = torch.Generator().manual_seed(seed * 1000 + s)
        (root / split).mkdir(exist_ok=True)
        names, images, annotations, k = [], [], [], 0
        for i in range(count):
            name = f"{split}_{i:05d}"
            image, objects = make_image(g, size)
            image.save(voc / "JPEGImages" / f"{name}.jpg", quality=95)
            image.save(root / split / f"{name}.jpg", quality=95)
            difficult = []
            for kind, (x1, y1, x2, y2) in objects:
                k += 1
                diff = bool(difficult_every) and k % difficult_every == 0
                difficult.append(diff)
                annotations.append(
                    {
                        "id": k,
                        "image_id": i + 1,
                        "category_id": SHAPE_CLASSES.index(kind) + 1,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": int(diff),
                    }
                )
            _voc_xml(name, size, objects, difficult).write(voc / "Annotations" / f"{name}.xml")
            names.append(name)
            images.append({"id": i + 1, "file_name": f"{name}.jpg", "width": size, "height": size})
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n")
        coco = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    return root
