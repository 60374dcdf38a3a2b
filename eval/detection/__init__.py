"""Detection transfer (issue #6): VOC07+12 and COCO with Detectron2 or torchvision.

Modules: ``presets`` / ``configs`` (Detectron2 configs built in code), ``convert`` (torchvision →
Detectron2 weights; also ``python -m eval.detection.convert``), ``data`` (VOC/COCO
readers), ``metrics`` (VOC 11-point and COCO AP), ``tv_models`` / ``tv_train`` (the
torchvision backend), ``d2_backend`` (Detectron2's trainer and launcher), ``mini`` (the
mini COCO), ``job`` (a callable for submitit), ``bench`` (the registered benchmarks;
importing it fills ``eval.registry.BENCHMARKS``).
"""
