from django.contrib import admin  # noqa: I001  (myapp is first-party in mysite)
from django.urls import include, path

from myapp import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("primes/", views.count_primes, name="count-primes"),
    path("sisy/", include("sisy.urls")),  # sisy's JSON API, see the last step
]
