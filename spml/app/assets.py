"""The page's fixed parts: its text, the method figure, the review's keyboard script, the style sheet."""

from __future__ import annotations

REVIEW_KEYS_JS = """() => {
  if (window.spmlReviewKeys) return;
  window.spmlReviewKeys = true;
  const keys = {c: "review-confirm", d: "review-dismiss", u: "review-undo", n: "review-next", p: "review-prev",
                ArrowRight: "review-next", ArrowLeft: "review-prev"};
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName))) return;
    const button = document.getElementById(keys[event.key] || keys[event.key.toLowerCase()] || "");
    if (!button || button.offsetParent === null) return;  // the review is not on screen
    event.preventDefault();
    button.click();
  });
}"""


# The CAM gallery: each map a square tile of a fixed size with its caption (label and probability) under it,
# never stretched to the column's width (Gradio gives a gallery of one image one column); one or two
# predicted labels get large tiles side by side, three or more a row of thumbnails.
CAM_GALLERY_LARGE = 264
CAM_GALLERY_SMALL = 136
CAM_GALLERY_CSS = f"""
#cam-gallery .grid-wrap {{ height: auto !important; min-height: 0 !important; }}
#cam-gallery .grid-container {{ grid-template-columns: repeat(auto-fill, {CAM_GALLERY_LARGE}px) !important;
                                justify-content: start; }}
#cam-gallery .grid-container:has(> .gallery-item:nth-child(3)) {{
  grid-template-columns: repeat(auto-fill, {CAM_GALLERY_SMALL}px) !important; }}
#cam-gallery button.thumbnail-item {{ aspect-ratio: auto !important; height: auto !important; width: 100%;
                                      display: flex; flex-direction: column; }}
#cam-gallery button.thumbnail-item img {{ width: 100% !important; height: auto !important; aspect-ratio: 1;
                                          object-fit: contain !important; }}
#cam-gallery .caption-label {{ position: static !important; max-width: none; text-align: center; margin: 0;
                               border-radius: 0; background: var(--block-background-fill);
                               color: var(--body-text-color); }}
"""

INTRO = """\
# Which labels did the annotator miss?
Many multi-label data sets give each training image **a single positive label**, although several
objects may be in it. Training every other class as *absent* teaches the model false negatives.
**CAM-based loss rejection (CALR)** looks where the model sees the one annotated class (its *class
activation map*, CAM), blanks out the rest of the image, and asks the model again. A class whose score
**drops a lot** once the rest of the image is gone (its logit gap is above the running threshold
T_gap) and that the model **was confident about** (its logit is above its running average A_c) was
probably present elsewhere in the image: its loss term is dropped instead of being trained as absent.
The *Inspect* view shows every step of this on an image of yours.
"""


def method_figure() -> str:
    """An inline SVG of the four steps on a toy scene (a circle annotated, a star not)."""
    mean = "#7c7468"  # the ImageNet mean colour: what the masked-out pixels become
    panel = '<rect x="{x}" y="30" width="140" height="140" rx="6" fill="{fill}" stroke="#888"/>'
    circle = '<circle cx="{x}" cy="75" r="26" fill="#e0302a"/>'
    star = ('<polygon transform="translate({x},130) scale(24)" fill="#8fd400" points="0,-1 0.24,-0.33 0.95,-0.31 '
            '0.38,0.12 0.59,0.81 0,0.4 -0.59,0.81 -0.38,0.12 -0.95,-0.31 -0.24,-0.33"/>')
    arrow = '<path d="M{x} 100 h18" stroke="#555" stroke-width="2" marker-end="url(#arrow)"/>'
    caption = '<text x="{x}" y="190" text-anchor="middle" font-size="12">{text}</text>'
    title = '<text x="{x}" y="20" text-anchor="middle" font-size="13" font-weight="bold">{text}</text>'
    parts = [
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 800 205" role="img" '
        'aria-label="The CALR method in four steps" style="max-width:800px;width:100%;font-family:sans-serif">',
        '<defs><marker id="arrow" markerWidth="8" markerHeight="8" refX="6" refY="4" orient="auto">'
        '<path d="M0,0 L8,4 L0,8 z" fill="#555"/></marker>'
        '<radialGradient id="heat"><stop offset="0" stop-color="#d7191c"/><stop offset="0.45" stop-color="#fdae61"/>'
        '<stop offset="0.8" stop-color="#abd9e9" stop-opacity="0.6"/><stop offset="1" stop-color="#2c7bb6" '
        'stop-opacity="0"/></radialGradient></defs>',
        # 1: the image and its one label
        title.format(x=80, text="1. Image, one label"),
        panel.format(x=10, fill="#d9d4c7"), circle.format(x=55), star.format(x=110),
        caption.format(x=80, text="label: circle (star missed)"),
        arrow.format(x=155),
        # 2: the CAM of the positive
        title.format(x=255, text="2. CAM of the circle"),
        panel.format(x=185, fill="#2c7bb6"), '<circle cx="230" cy="75" r="52" fill="url(#heat)"/>',
        caption.format(x=255, text="where the model sees it"),
        arrow.format(x=330),
        # 3: the masked image
        title.format(x=430, text="3. Masked image"),
        panel.format(x=360, fill=mean), '<rect x="370" y="40" width="72" height="72" fill="#d9d4c7"/>',
        circle.format(x=405), '<rect x="370" y="40" width="72" height="72" fill="none" stroke="#fff" '
        'stroke-dasharray="4 3"/>',
        caption.format(x=430, text="CAM > threshold kept"),
        arrow.format(x=505),
        # 4: logits before and after
        title.format(x=660, text="4. Logits: image → masked"),
        '<line x1="540" y1="100" x2="790" y2="100" stroke="#888"/>',
        '<text x="620" y="48" text-anchor="middle" font-size="11">image</text>'
        '<text x="685" y="48" text-anchor="middle" font-size="11">masked</text>',
        '<text x="545" y="60" font-size="12">star</text>',
        '<rect x="590" y="55" width="60" height="45" fill="#8fd400"/><rect x="655" y="100" width="60" height="30" '
        'fill="#8fd400" opacity="0.45"/>',
        '<text x="720" y="70" font-size="11">big gap,</text><text x="720" y="84" font-size="11">confident:</text>',
        '<text x="720" y="98" font-size="11" font-weight="bold" fill="#c00">rejected</text>',
        '<text x="545" y="150" font-size="12">ring</text>',
        '<rect x="590" y="100" width="60" height="42" fill="#3aa"/><rect x="655" y="100" width="60" height="44" '
        'fill="#3aa" opacity="0.45"/>',
        '<text x="720" y="130" font-size="11">no gap:</text><text x="720" y="144" font-size="11">stays negative</text>',
        caption.format(x=660, text="rejected = not trained as absent"),
        "</svg>",
    ]
    return "".join(parts)
