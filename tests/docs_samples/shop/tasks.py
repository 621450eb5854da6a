def sync(message):
    return {"synced": True}
