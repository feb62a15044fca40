"""Geometry shared by every method: grids and warps, keypoints, the rasterizer, morphable heads.

Conventions (docs/index.md): normalised (x, y) in [-1, 1] with ``align_corners=True``, x right,
y down; mesh z is depth into the screen (smaller is nearer).
"""

from animzoo.geometry.grid import (
    flow_to_grid,
    grid_to_flow,
    make_coordinate_grid,
    mesh_normalized_to_pixel,
    mesh_pixel_to_normalized,
    normalized_to_pixel,
    pixel_to_normalized,
    resize_flow,
    warp,
    warp_with_flow,
)
from animzoo.geometry.heads import HeadParams, MorphableHead, ProceduralHead
from animzoo.geometry.keypoints import (
    convex_hull_area,
    dsnt,
    heatmap_to_keypoints,
    keypoints_to_gaussian,
    normalize_kp,
    softmax_heatmap,
)
from animzoo.geometry.raster import Fragments, interpolate, rasterize, render

__all__ = [
    "Fragments", "HeadParams", "MorphableHead", "ProceduralHead", "convex_hull_area", "dsnt",
    "flow_to_grid", "grid_to_flow", "heatmap_to_keypoints", "interpolate", "keypoints_to_gaussian",
    "make_coordinate_grid", "mesh_normalized_to_pixel", "mesh_pixel_to_normalized",
    "normalize_kp", "normalized_to_pixel", "pixel_to_normalized", "rasterize", "render",
    "resize_flow", "softmax_heatmap", "warp", "warp_with_flow",
]
