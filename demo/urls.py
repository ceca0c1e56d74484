from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from demo import views as demo_views

urlpatterns = [
    path("admin/", admin.site.urls),
    # The user-facing report page (launch() in a view, live progress, result, cancel).
    path("", demo_views.reports, name="demo-reports"),
    path("reports/launch/", demo_views.launch_report, name="demo-report-launch"),
    path("reports/job/", demo_views.report_job, name="demo-report-job"),
    path("reports/job/status/", demo_views.report_status, name="demo-report-status"),
    path("reports/job/result/", demo_views.report_result, name="demo-report-result"),
    path("reports/job/cancel/", demo_views.cancel_report, name="demo-report-cancel"),
    path(
        "login/",
        auth_views.LoginView.as_view(template_name="demo/login.html"),
        name="demo-login",
    ),
    path("logout/", auth_views.LogoutView.as_view(next_page="demo-login"), name="demo-logout"),
]
