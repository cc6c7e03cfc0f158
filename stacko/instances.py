"""A stackpoint's instances: new, set and delete (new-stackpoint-instance,
set-stackpoint-instance, delete-stackpoint-instance).

The stackpoint itself and its switches are in stackpoints.py; an instance is
made there too (new-stackpoint makes the first), and switched to through
switch.py like any cutover.
"""
from __future__ import annotations

from stacko import events
from stacko.errors import AlreadyExists, InstanceNotFound, StackoError, StackpointBusy
from stacko.guard import _refuse_if_held, mounted_instance
from stacko.names import check_name
from stacko.pending import refuse_if_checking
from stacko.records import Instance, Stackpoint, replace
from stacko.stackpoints import OrderHint, _new_instance, get, undo_if_interrupted
from stacko.state import Store, locked


@locked(exclusive=True)
def new_instance(store: Store, name: str, image: str) -> None:
    from stacko import images as images_mod
    images = store.load_images()
    points = store.load_stackpoints()
    with OrderHint(images, points, name, image, "new-stackpoint-instance"):
        images_mod.get(images, image)
        point = get(points, name)
    if point.instance(image) is not None:
        raise AlreadyExists(f"stackpoint {name!r} has an instance of {image!r} already")
    points = undo_if_interrupted(store, points, name, "new-stackpoint-instance")
    point = get(points, name)
    inst = _new_instance(store, images, name, image)
    try:
        store.save_stackpoints({**points, name: point.with_instance(inst)})
    except BaseException:
        from stacko.layers import remove_layer
        remove_layer(store, inst.layer)
        raise


def _instance(point: Stackpoint, image: str) -> Instance:
    check_name(image, "image name")
    inst = point.instance(image)
    if inst is None:
        from stacko.suggest import did_you_mean
        raise InstanceNotFound(f"stackpoint {point.name!r} has no instance of {image!r}",
                               hint=did_you_mean(image, [i.image for i in point.instances],
                                                 f"`stacko new-stackpoint-instance "
                                                 f"{point.name} {image}` makes one"))
    return inst


@locked(exclusive=True)
def set_instance(store: Store, name: str, image: str) -> None:
    images = store.load_images()
    points = store.load_stackpoints()
    with OrderHint(images, points, name, image, "set-stackpoint-instance"):
        point = get(points, name)
    _instance(point, image)
    points = undo_if_interrupted(store, points, name, "set-stackpoint-instance")
    point = get(points, name)
    if image == point.current:
        return
    refuse_if_checking(point, "set-stackpoint-instance")
    from stacko.tentative import refuse_if_tentative
    refuse_if_tentative(point, "set-stackpoint-instance")
    new = replace(point.switched_to(image), tentative=None, checking=None)
    new = events.add(new, "set", point.current, image, "set-stackpoint-instance")
    from stacko.switch import _switch
    _switch(store, images, points, new, None, mount=False, action="set-stackpoint-instance")


@locked(exclusive=True)
def delete_instance(store: Store, name: str, image: str) -> None:
    points = store.load_stackpoints()
    with OrderHint(store.load_images(), points, name, image, "delete-stackpoint-instance"):
        point = get(points, name)
    _instance(point, image)
    points = undo_if_interrupted(store, points, name, "delete-stackpoint-instance")
    point = get(points, name)
    inst = _instance(point, image)
    refuse_if_checking(point, "delete-stackpoint-instance")
    from stacko.tentative import refuse_if_tentative
    refuse_if_tentative(point, "delete-stackpoint-instance", deleting=image)
    if image == point.current:
        raise StackoError(f"cannot delete the current instance ({image!r}) of stackpoint {name!r}",
                          hint="switch to another instance first, or delete the stackpoint")
    mounted = mounted_instance(store, point)
    if mounted is not None and mounted.image == image:
        raise StackpointBusy(f"the instance of {image!r} is mounted at {store.stackpoint_dir(point)}",
                             hint=f"run `stacko umount-stackpoint {name}` first")
    point = _refuse_if_held(store, point, image, "delete-stackpoint-instance")
    store.save_stackpoints({**points, name: point.without_instance(image)})
    from stacko.layers import remove_layer
    remove_layer(store, inst.layer)
